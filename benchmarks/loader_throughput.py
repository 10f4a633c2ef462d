"""Loader throughput on video clips: the bucketed loader against plain Grain and tf.data.

    .venv/bin/python benchmarks/loader_throughput.py [--videos 96] [--batches 150]
        [--appetite_steps 10] [--batch 16]

Builds a video dataset from the demo corpus (160 px frames, 8 fps, 16 frames
per clip, stored as the pipeline stores them), then in one run, for 1 and 2
workers, reads batches of video clips and reports examples/s and patch
tokens/s (tubelet 4x16x16):
  - plain Grain: ArrayRecordDataSource, global shuffle, parse, decode 8 frames
    with the loader's own JPEG decoding (so the ratio is the price of the
    buckets and augmentation), centre crop and resize to 112x112, batch of 16,
    mp_prefetch;
  - tf.data: the same records (read by index, shuffled), tf.io.parse_single_example,
    tf.io.decode_jpeg, crop and resize, batch of 16, parallel map with that many
    threads, prefetch;
  - impax's loader with the same single shape (8x112x112, batches of 16) but
    its training preprocessing (random resized crops, flips, temporal jitter):
    the ratios the goals are about;
  - impax's loader with three buckets of about equal tokens per batch
    (8x112x112, 16x80x80, 4x160x160, batches of 16: 1,568 / 1,600 / 1,600
    tokens), reported beside them: its 16-frame bucket decodes twice the
    frames per token of the others, so it costs more decoding per token.
Goals (issue 4): loader / plain Grain >= 0.9, loader / tf.data >= 1.0.
Then the loader against the trainer's appetite: the tiny preset's training
step (forward, backward, AdamW) on the same buckets, batches per second
(--appetite_steps timed steps per bucket after its compilation), goal: the
loader with 2 workers delivers >= 3 times what the step consumes.
Prints JSON. --batch changes the batch of 16 (and the loader's token budget with
it, 100 tokens an example).
"""

import argparse
import json
import os
import tempfile
import time

import grain
import numpy as np

from impax.datasets import decode, loader
from impax.datasets import records as records_lib

FRAMES, SIZE = 8, 112
BATCH = 16  # --batch

BUCKETS = (loader.Bucket(video=(8, 112, 112)), loader.Bucket(video=(16, 80, 80)),
           loader.Bucket(video=(4, 160, 160)))
PATCHES = loader.Patches(tubelet=(4, 16, 16))  # the tokens below count 4x16x16 tubelets too


def build_dataset(root: str, videos: int) -> str:
  out = os.path.join(root, "videos")
  if os.path.exists(os.path.join(out, "metadata.json")):
    return out
  # Here, not at the top: each Grain worker process imports this module (scikit-learn and
  # Beam are seconds of its start).
  from impax import demo
  from impax.pipelines import build
  manifests = demo.generate(os.path.join(root, "raw"), videos=videos, images=2, audio=2,
                            seconds=2.0, size=160, held_out={"test": 0.1}, seed=0)
  plan = build.prepare("jsonl", manifests["videos-train"], out, "train",
                       ({"video_short_side": 160, "video_fps": 8.0},))
  build.run(plan, workers=2)
  return out


def plain_decode(record: bytes) -> np.ndarray:
  """The middle 8 frames, centre crop, 112x112: the loader's JPEG decoding, no buckets."""
  video = records_lib.Record.parse(record).video
  frames, (h, w) = video.frames, video.shape
  s = min(w, h)
  box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
  start = max(0, len(frames) - FRAMES) // 2
  return np.stack([decode.decode_jpeg(frames[min(start + t, len(frames) - 1)], box, SIZE, SIZE,
                                      False) for t in range(FRAMES)])


def plain_grain(paths, workers):
  source = grain.sources.ArrayRecordDataSource(paths)
  ds = (grain.MapDataset.source(source).shuffle(seed=0).repeat().map(plain_decode)
        .batch(BATCH, drop_remainder=True)
        .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ds)


def tf_data(paths, workers):
  import tensorflow as tf
  source = grain.sources.ArrayRecordDataSource(paths)
  n = len(source)

  def records():
    epoch = 0
    while True:
      for i in np.random.default_rng(epoch).permutation(n):
        yield source[int(i)]
      epoch += 1

  spec = {"video/frames": tf.io.VarLenFeature(tf.string)}

  def decode(record):
    frames = tf.sparse.to_dense(tf.io.parse_single_example(record, spec)["video/frames"])
    count = tf.shape(frames)[0]
    start = tf.maximum(0, count - FRAMES) // 2
    idx = tf.minimum(tf.range(start, start + FRAMES), count - 1)

    def one(jpeg):
      image = tf.io.decode_jpeg(jpeg, channels=3)
      h, w = tf.shape(image)[0], tf.shape(image)[1]
      s = tf.minimum(h, w)
      image = tf.image.crop_to_bounding_box(image, (h - s) // 2, (w - s) // 2, s, s)
      return tf.cast(tf.image.resize(image, (SIZE, SIZE)), tf.uint8)

    return tf.map_fn(one, tf.gather(frames, idx), fn_output_signature=tf.uint8)

  ds = (tf.data.Dataset.from_generator(records, output_signature=tf.TensorSpec((), tf.string))
        .map(decode, num_parallel_calls=max(1, workers))
        .batch(BATCH, drop_remainder=True).prefetch(2))
  options = tf.data.Options()
  options.threading.private_threadpool_size = max(1, workers)  # equal parallelism
  ds = ds.with_options(options)
  return (b.numpy() for b in ds)


def impax_loader(path, workers, buckets=BUCKETS[:1]):
  task = loader.Task("video", path, "contrastive", ("video",), buckets=buckets,
                     token_budget=100 * BATCH)
  return iter(loader.Loader(task, seed=0, num_workers=workers, patches=PATCHES))


def video_of(batch):
  return batch["video"] if isinstance(batch, dict) else batch


def measure(make, batches: int, warmup: int = 3) -> dict:
  it = make()
  for _ in range(warmup):  # worker start-up and first reads are not throughput
    next(it)
  examples = tokens = 0
  start = time.perf_counter()
  for _ in range(batches):
    v = video_of(next(it))
    examples += v.shape[0]
    tokens += v.shape[0] * (v.shape[1] // 4) * (v.shape[2] // 16) * (v.shape[3] // 16)
  seconds = time.perf_counter() - start
  if hasattr(it, "close"):
    it.close()
  return {"examples_per_s": round(examples / seconds, 1),
          "tokens_per_s": round(tokens / seconds), "seconds": round(seconds, 2)}


def trainer_appetite(path: str, steps: int = 10) -> dict:
  """Batches/s the tiny preset's training step consumes on the loader's buckets."""
  import jax
  import jax.numpy as jnp
  import optax

  from impax.model import Model, get_config, init_params

  config = get_config("tiny")
  model, opt = Model(config), optax.adamw(1e-3)
  params = init_params(config, jax.random.key(0))
  state = opt.init(params)

  @jax.jit
  def step(params, state, video):
    def loss_fn(p):
      out = model.apply({"params": p}, {"video": video.astype(jnp.float32) / 255.0})
      return jnp.mean(out["video"]["embedding"] ** 2) + out["aux_loss"]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  task = loader.Task("video", path, "contrastive", ("video",), buckets=BUCKETS,
                     token_budget=100 * BATCH)
  data = loader.Loader(task, seed=0, patches=PATCHES)  # its batches, as the benchmark reads them
  shapes = [s["video"][0] for s in data.batch_shapes()]
  times = []
  for shape in shapes:  # compile each bucket once, then time it
    video = jnp.zeros(shape, jnp.uint8)
    jax.block_until_ready(step(params, state, video))
    start = time.perf_counter()
    for _ in range(steps):
      params, state, loss = step(params, state, video)
    jax.block_until_ready(loss)
    times.append((time.perf_counter() - start) / steps)
  batches_per_s = 1 / float(np.mean(times))
  return {"step_s_per_bucket": [round(t, 4) for t in times],
          "batches_per_s": round(batches_per_s, 2),
          "examples_per_s": round(batches_per_s * BATCH, 1)}


def main():
  global BATCH
  parser = argparse.ArgumentParser()
  parser.add_argument("--videos", type=int, default=96)
  parser.add_argument("--batches", type=int, default=150)
  parser.add_argument("--appetite_steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=BATCH)
  parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "impax-bench-loader"))
  args = parser.parse_args()
  BATCH = args.batch
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain's multiprocessing reads absl flags
  path = build_dataset(args.root, args.videos)
  from impax.datasets import prepared
  paths = prepared.open_dataset(path).shard_paths("train")
  results = {}
  for workers in (1, 2):
    results[f"workers_{workers}"] = r = {
        "plain_grain": measure(lambda: plain_grain(paths, workers), args.batches),
        "tf_data": measure(lambda: tf_data(paths, workers), args.batches),
        "impax_loader": measure(lambda: impax_loader(path, workers), args.batches),
        "impax_loader_3_buckets": measure(lambda: impax_loader(path, workers, BUCKETS),
                                          args.batches),
    }
    mine = r["impax_loader"]["tokens_per_s"]
    r["loader_over_plain_grain"] = round(mine / r["plain_grain"]["tokens_per_s"], 3)
    r["loader_over_tf_data"] = round(mine / r["tf_data"]["tokens_per_s"], 3)
  one, two = (results[f"workers_{w}"]["impax_loader"]["tokens_per_s"] for w in (1, 2))
  results["loader_two_workers_over_one"] = round(two / one, 3)
  appetite = trainer_appetite(path, args.appetite_steps)
  results["tiny_training_step"] = appetite
  results["loader_over_training_step"] = round(
      results["workers_2"]["impax_loader"]["examples_per_s"] / appetite["examples_per_s"], 2)
  results["goals"] = {"loader_over_plain_grain": 0.9, "loader_over_tf_data": 1.0,
                      "loader_over_training_step": 3.0}
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
