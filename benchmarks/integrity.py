"""What checking a dataset's integrity costs, against building it, in the same run.

    .venv/bin/python benchmarks/integrity.py [--images 200] [--mb 512]

Builds a demo image corpus, then times: the build itself (the baseline), the next
`prepare` of the same build (the up-to-date check: a listing for sizes and a sha256
of every local shard), `impax verify` fast and --deep; and sha256 of an --mb file
against reading it (both from the page cache), the cost per GB of hashing.
"""

import argparse
import os
import tempfile
import time

from impax import demo
from impax.datasets import files
from impax.pipelines import build
from impax.tools import verify


def timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=200)
  parser.add_argument("--mb", type=int, default=512)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    manifests = demo.generate(os.path.join(root, "raw"), videos=0, images=args.images, audio=0,
                              size=64, seed=0)
    out = os.path.join(root, "images")
    settings = ({"image_short_side": 64, "num_shards": 4},)
    plan = build.prepare("jsonl", manifests["images-train"], out, "train", settings)
    built = timed(lambda: build.run(plan, workers=2))
    check = timed(lambda: build.prepare("jsonl", manifests["images-train"], out, "train", settings))
    fast = timed(lambda: verify.verify(out))
    deep = timed(lambda: verify.verify(out, deep=True))
    size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)
               if ".array_record-" in n)
    print(f"dataset: {args.images} images in, {size / 1e6:.1f} MB of shards")
    print(f"build                 {built:8.3f} s  1.000")
    print(f"up-to-date prepare    {check:8.3f} s  {check / built:.4f} of the build")
    print(f"verify                {fast:8.3f} s  {fast / built:.4f}")
    print(f"verify --deep         {deep:8.3f} s  {deep / built:.4f}")

    big = os.path.join(root, "big")
    with open(big, "wb") as f:
      for _ in range(args.mb):
        f.write(os.urandom(1 << 20))

    def read():
      with open(big, "rb") as f:
        while f.read(1 << 20):
          pass
    read()  # into the page cache
    plain = timed(read)
    hashed = timed(lambda: files.sha256(big))
    print(f"read {args.mb} MB           {plain:8.3f} s  1.000 ({args.mb / plain:.0f} MB/s)")
    print(f"sha256 {args.mb} MB         {hashed:8.3f} s  {hashed / plain:.2f}x the read "
          f"({args.mb / hashed:.0f} MB/s, {1024 / (args.mb / hashed):.2f} s per GB)")


if __name__ == "__main__":
  main()
