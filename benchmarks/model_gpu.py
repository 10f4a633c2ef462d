"""Training throughput and model FLOPs utilization on one NVIDIA GPU.

    .venv/bin/python benchmarks/model_gpu.py                  # B and MoE-B
    .venv/bin/python benchmarks/model_gpu.py --presets B --input video
    .venv/bin/python benchmarks/model_gpu.py --presets MoE-B --remat save_dots --scan
    .venv/bin/python benchmarks/model_gpu.py --presets tiny --size 32 --start-batch 8 \
        --max-batch 8 --bisect-steps 0 --steps 1  # CPU smoke run (benchmarks/smoke.py)

For each preset, in bfloat16 compute with float32 parameters and router: one
training step (forward, backward, AdamW update with clipping, parameters and
optimizer state donated) on IMP-shaped inputs: an image is 256 x 256 (256
tubelet tokens), a video 16 x 256 x 256 (1024 tokens); --size changes the 256.
The batch doubles from
--start-batch until the step runs out of memory, then bisects (in multiples of
8) to the largest batch that fits, where it is timed. MFU = tokens/s x
training FLOPs per token (info.py: 3 x forward, attention included) / the GPU's
peak dense bfloat16 FLOP/s (table below, or --peak-tflops). Prints JSON.

Goals (issue 3): MFU >= 40% for B, >= 30% for MoE-B.
"""

import argparse
import gc
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from impax.model import Model, get_config, info, init_params
from impax.model.config import REMAT

# Peak dense bfloat16 tensor FLOP/s by device kind (vendor datasheets).
PEAK_TFLOPS = {
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4,
    "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4, "GH200": 989.4,
    "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
    "L4": 121.0, "A10G": 70.0, "A10": 125.0, "V100": 125.0,
    "RTX 4090": 165.2, "RTX 6000 Ada": 364.0,
}


def peak_flops(device) -> float | None:
  kind = device.device_kind
  for name, tflops in PEAK_TFLOPS.items():  # Longest names are listed first.
    if name in kind:
      return tflops * 1e12
  return None


def make_inputs(config, modality: str, batch: int, size: int = 256) -> tuple[dict, int]:
  """IMP-shaped inputs (size x size pixels) and their token count per example."""
  t, p, q = config.tubelet
  if modality == "image":
    shape, tokens = (batch, size, size, 3), (size // p) * (size // q)
  else:
    shape, tokens = (batch, 16, size, size, 3), (16 // t) * (size // p) * (size // q)
  x = jax.random.uniform(jax.random.key(0), shape, jnp.float32)
  return {modality: x}, tokens


def is_oom(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run(config, modality: str, batch: int, steps: int, size: int = 256):
  """Median step seconds, or None when the batch does not fit."""
  model = Model(config)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-7,
                               weight_decay=1e-4))
  head = "imagenet" if modality == "image" else "kinetics700"

  def step(params, opt_state, inputs, labels):
    def loss_fn(params):
      out = model.apply({"params": params}, inputs, heads={modality: head})
      loss = optax.softmax_cross_entropy_with_integer_labels(
          out[modality]["logits"][head], labels).mean()
      return loss + out["aux_loss"]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  params = opt_state = None
  try:
    params = init_params(config, jax.random.key(0))
    opt_state = tx.init(params)
    inputs, _ = make_inputs(config, modality, batch, size)
    labels = jnp.zeros((batch,), jnp.int32)
    times = []
    for i in range(steps + 2):  # Two warm-up steps (compilation).
      start = time.perf_counter()
      params, opt_state, loss = step(params, opt_state, inputs, labels)
      float(loss)
      if i >= 2:
        times.append(time.perf_counter() - start)
    return statistics.median(times)
  except Exception as e:  # pylint: disable=broad-except
    if is_oom(e):
      return None
    raise
  finally:
    del params, opt_state
    jax.clear_caches()
    gc.collect()


def largest_batch(config, modality, start, max_batch, bisect_steps, size=256):
  """(largest batch that fits, its step seconds, [(batch, seconds|None)])."""
  tried = []
  good, good_s, bad = None, None, None
  batch = start
  while batch <= max_batch:
    s = run(config, modality, batch, steps=2, size=size)
    tried.append((batch, s))
    if s is None:
      bad = batch
      break
    good, good_s = batch, s
    batch *= 2
  for _ in range(bisect_steps):
    if good is None or bad is None or bad - good <= 8:
      break
    mid = (good + bad) // 2 // 8 * 8
    s = run(config, modality, mid, steps=2, size=size)
    tried.append((mid, s))
    if s is None:
      bad = mid
    else:
      good, good_s = mid, s
  return good, good_s, tried


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--presets", nargs="+", default=["B", "MoE-B"])
  parser.add_argument("--input", choices=["image", "video"], default="image")
  parser.add_argument("--size", type=int, default=256, help="an image's (a frame's) side")
  parser.add_argument("--start-batch", type=int, default=64)
  parser.add_argument("--max-batch", type=int, default=8192)
  parser.add_argument("--bisect-steps", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--attention", default="cudnn",
                      help="jax.nn.dot_product_attention implementation on "
                      "GPU: cudnn (flash attention) or xla.")
  parser.add_argument("--remat", choices=REMAT, default="none",
                      help="what a block keeps for its backward pass (model/config.py REMAT); "
                      "benchmarks/model_memory.py's table says which fits")
  parser.add_argument("--scan", action="store_true",
                      help="scan_layers: one block compiled per run of identical blocks")
  parser.add_argument("--peak-tflops", type=float, default=None)
  args = parser.parse_args()

  device = jax.devices()[0]
  on_gpu = device.platform == "gpu"
  peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
  results = {}
  for preset in args.presets:
    config = get_config(preset, dtype="bfloat16", remat=args.remat, scan_layers=args.scan,
                        attention_impl=args.attention if on_gpu else None)
    _, tokens = make_inputs(config, args.input, 1, args.size)
    counts = info.info(config, tokens=tokens)
    note = None
    try:
      batch, _, tried = largest_batch(config, args.input, args.start_batch,
                                      args.max_batch, args.bisect_steps, args.size)
    except Exception as e:  # pylint: disable=broad-except
      if config.attention_impl != "cudnn":
        raise
      # cuDNN attention unsupported here (version, GPU): fall back to XLA.
      note = f"cudnn attention failed ({type(e).__name__}); used xla"
      config = get_config(preset, dtype="bfloat16", remat=args.remat, scan_layers=args.scan)
      batch, _, tried = largest_batch(config, args.input, args.start_batch,
                                      args.max_batch, args.bisect_steps, args.size)
    if batch is None:
      results[preset] = dict(error="start batch does not fit", tried=tried)
      continue
    seconds = run(config, args.input, batch, args.steps, args.size)
    tokens_per_s = batch * tokens / seconds
    flops_per_s = tokens_per_s * counts["train_flops_per_token"]
    results[preset] = dict(
        largest_batch=batch, step_seconds=round(seconds, 4),
        tokens_per_second=round(tokens_per_s),
        examples_per_second=round(batch / seconds, 1),
        model_tflops_per_second=round(flops_per_s / 1e12, 1),
        mfu=round(flops_per_s / peak, 4) if peak else None,
        train_flops_per_token=counts["train_flops_per_token"],
        active_params_per_token=counts["active_params_per_token"],
        total_params=counts["total_params"],
        attention=config.attention_impl or "xla", note=note,
        batches_tried=[[b, None if s is None else round(s, 4)]
                       for b, s in tried])
  print(json.dumps(dict(
      device=device.device_kind, platform=device.platform,
      peak_tflops=peak / 1e12 if peak else None, input=args.input, size=args.size,
      tokens_per_example=tokens, dtype="bfloat16",
      remat=args.remat, scan_layers=args.scan,
      results=results, goals=dict(B=0.40, **{"MoE-B": 0.30})), indent=2))


if __name__ == "__main__":
  main()
