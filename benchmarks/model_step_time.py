"""Forward + backward step time of an MoE preset against its dense twin, on CPU.

    .venv/bin/python benchmarks/model_step_time.py
    .venv/bin/python benchmarks/model_step_time.py --dense B --moe MoE-B --batch 2
    .venv/bin/python benchmarks/model_step_time.py --smoke  # seconds: tiny, its dense twin

MoE-S and S have the same active parameters per token (expert choice with
capacity factor 1.0: each token visits one expert on average), so the ratio
of their step times is the price of routing (router, top-k, gather, scatter).
Both models run in one process, timed in alternating rounds so that a busy
machine slows both alike. Prints JSON; the goal is ratio <= 1.3. --smoke runs the
same at the smallest size: the tiny preset against itself without experts, one
round of a batch of one 4x32x32 video.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from impax.model import Model, get_config, info, init_params


def make_step(config):
  model = Model(config)

  def loss_fn(params, video, target):
    out = model.apply({"params": params}, {"video": video})
    return jnp.mean((out["video"]["embedding"] - target) ** 2) + out["aux_loss"]

  return jax.jit(jax.value_and_grad(loss_fn))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dense", default="S")
  parser.add_argument("--moe", default="MoE-S")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--frames", type=int, default=8)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny against tiny without experts, batch 1 of 4x32x32, 1 round")
  args = parser.parse_args()
  # (name, preset, overrides): the dense model, then the MoE.
  models = ((args.dense, args.dense, {}), (args.moe, args.moe, {}))
  if args.smoke:
    args.dense, args.moe, args.batch, args.frames, args.size, args.rounds = (
        "tiny-dense", "tiny", 1, 4, 32, 1)
    models = (("tiny-dense", "tiny", {"moe_layers": (), "num_experts": 0}), ("tiny", "tiny", {}))

  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.random(
      (args.batch, args.frames, args.size, args.size, 3), dtype=np.float32))
  results = {}
  runs = {}
  for name, preset, overrides in models:
    config = get_config(preset, **overrides)
    params = init_params(config, jax.random.key(0))
    target = jnp.asarray(rng.standard_normal((args.batch, config.embed_dim)),
                         jnp.float32)
    step = make_step(config)
    start = time.perf_counter()
    jax.block_until_ready(step(params, video, target))
    compile_s = time.perf_counter() - start
    runs[name] = (step, params, target)
    counts = info.info(config)
    results[name] = dict(
        active_params_per_token=counts["active_params_per_token"],
        total_params=counts["total_params"], compile_s=round(compile_s, 1),
        times_s=[])

  for _ in range(args.rounds):  # Alternate so both see the same machine.
    for name, (step, params, target) in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(step(params, video, target))
      results[name]["times_s"].append(round(time.perf_counter() - start, 4))

  for r in results.values():
    r["median_s"] = statistics.median(r["times_s"])
  t, p, q = config.tubelet
  tokens = video.shape[0] * (args.frames // t) * (args.size // p) * (args.size // q)
  ratio = results[args.moe]["median_s"] / results[args.dense]["median_s"]
  print(json.dumps(dict(
      device=jax.devices()[0].device_kind, cpu_devices=jax.device_count(),
      tokens_per_step=tokens, video=list(video.shape), models=results,
      ratio_moe_over_dense=round(ratio, 3), goal=1.3, ok=ratio <= 1.3),
      indent=2))


if __name__ == "__main__":
  main()
