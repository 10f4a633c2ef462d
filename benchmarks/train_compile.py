"""The trainer's ahead-of-time compilation: a thread per core against one after another.

    .venv/bin/python benchmarks/train_compile.py --data demo-output/data [--rounds 2]
        [--set KEY=VALUE ...] [--cache]

Each round starts the demo config (train/configs/demo.py) for one step twice
in fresh processes, without a persistent compilation cache: once as the trainer
compiles (its 8 (task, shape) programs on a thread per core), once with
`os.cpu_count` made 1 (one after another). Reports the wall time from the
model's start to the last program compiled, and the ratio threads / sequential.
--set changes the config as `impax train --set` does; --cache keeps the
environment's persistent compilation cache (benchmarks/smoke.py: the times then
are loads, not compilations).
"""

import argparse
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import os, sys, time
if sys.argv[1] == "sequential":
  os.cpu_count = lambda: 1
from impax.train import config as config_lib, trainer
config = config_lib.load(sys.argv[2], ["steps=1", "eval_every=0", "keep_best=", "eval_at_end=false",
                                       "plots=false", *sys.argv[4:]])
lines = []
trainer.train(config, sys.argv[3], log=lambda line: lines.append((time.perf_counter(), line)))
start = next(t for t, l in lines if l.startswith("model "))
print(max(t for t, l in lines if l.startswith("compiled")) - start)
"""


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config field, as impax train --set")
  parser.add_argument("--cache", action="store_true",
                      help="keep the environment's JAX persistent compilation cache")
  args = parser.parse_args()
  from impax.demo import DEMO_CONFIG
  env = {k: v for k, v in os.environ.items()
         if args.cache or not k.startswith("JAX_COMPILATION_CACHE")}
  times = {"threads": [], "sequential": []}
  with tempfile.TemporaryDirectory() as root:
    for r in range(args.rounds):
      for mode in times:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, f"{DEMO_CONFIG}:{args.data}",
                              os.path.join(root, f"{mode}-{r}"), *args.set], env=env, check=True,
                             capture_output=True, text=True).stdout
        times[mode].append(float(out.strip().splitlines()[-1]))
        print(mode, f"{times[mode][-1]:.1f} s", flush=True)
  threads, sequential = min(times["threads"]), min(times["sequential"])
  print(f"compile wall: threads {threads:.1f} s, sequential {sequential:.1f} s, "
        f"ratio {threads / sequential:.2f} (best of {args.rounds})")


if __name__ == "__main__":
  main()
