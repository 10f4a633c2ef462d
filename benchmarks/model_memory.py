"""Each paper config's train step on paper: memory, FLOPs and compile time, compiled, never run.

    .venv/bin/python benchmarks/model_memory.py --smoke             # tiny, 8 devices, one compile
    .venv/bin/python benchmarks/model_memory.py --configs MoE-B --devices 64 \
        --policies none full save_dots_no_batch --scan 1 0 --batch 8192

For each (preset, device count, remat policy, scan_layers, global batch) the
script starts a process with `--xla_force_host_platform_device_count=N` CPU
devices (a ('data', 'expert') mesh, train/step.py's make_mesh), builds the
trainer's step (train/step.py: make_step, Compiled) on a state of shapes and
shardings alone (nothing is allocated), lowers it and compiles it for the
task's batch, and prints one JSON line per compile (then a table of them all),
its figures for one device:

  params_bytes, opt_state_bytes  this device's shards of the state (float32)
  batch_bytes                    this device's share of the input batch
  temp_bytes                     XLA's temporary buffers (activations kept for
                                 the backward pass, gradients, workspace):
                                 compiled.memory_analysis()
  peak_bytes                     arguments + outputs - donated aliases + temp
  hlo_flops                      compiled.cost_analysis()["flops"], this device
  model_flops                    the analytic count, this device's share:
                                 6 x active parameters x tokens ("6ND") and
                                 info.py's training FLOPs with attention
  compile_s, compile_cpu_s       wall and CPU seconds to lower and compile it
                                 (Compiled.prepare, as the trainer does)

The task lowered is IMP's video-text contrastive step (--task video_text):
video 16x256x256 in 4x16x16 tubelets, 1,024 tokens of which DropToken keeps
25% (256), against 16-token captions; or image-text (--task image_text):
256x256 images, 256 tokens, no DropToken. Compute in --dtype (default
bfloat16) with float32 parameters, AdamW with clipping, the state donated, as
the trainer runs it. Routing groups are the preset's group_size (IMP: 2,048
tokens) unless a device's share of the batch cannot fill one; then the largest
that each device holds whole (the figure is in the JSON line). --smoke: the
tiny preset on 4x32x32 videos, 8 devices, batch 16, full remat, scanned.

These are CPU compilations: XLA's CPU backend chooses its own fusions and
buffer reuse (and computes bfloat16 matmuls through float32), so the memory
figures are estimates of an accelerator's, not its measurements.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from impax.model import Model, get_config, info, init_params, moe
from impax.model.config import REMAT
from impax.train import step
from impax.train.config import Bucket, Task, TrainConfig

PRESETS = ("B", "MoE-B", "L", "MoE-L")


def task_and_shapes(name: str, batch: int):
  """(Task, {input: (shape, dtype)}) of IMP's inputs at global `batch`."""
  text = dict(text=((batch, 16), "int32"), text_mask=((batch, 16), "int32"),
              valid=((batch,), "bool"))
  if name == "video_text":
    task = Task(name, "", "contrastive", ("video", "text"),
                buckets=(Bucket(video=(16, 256, 256)),), drop_token=0.75)
    return task, dict(video=((batch, 16, 256, 256, 3), "uint8"), **text)
  task = Task(name, "", "contrastive", ("image", "text"), buckets=(Bucket(image=(256, 256)),))
  return task, dict(image=((batch, 256, 256, 3), "uint8"), **text)


def tokens_per_example(model_cfg, task, shapes) -> dict[str, int]:
  """Tokens the encoder sees per example: the media's patches DropToken keeps, the caption's."""
  t, p, q = model_cfg.tubelet
  if "video" in shapes:
    frames, h, w = shapes["video"][0][1:4]
  else:
    (h, w), frames = shapes["image"][0][1:3], t  # an image is one tubelet deep
  patches = (frames // t) * (h // p) * (w // q)
  return {"media": max(1, round(patches * (1 - task.drop_token))),
          "text": shapes["text"][0][1]}


def measure(preset: str, policy: str, scan: bool, batch: int, task_name: str, dtype: str,
            smoke: bool) -> dict:
  """Lowers and compiles one train step in this process (its devices are the mesh)."""
  # XLA_FLAGS (the device count) is read when jax first starts its backend: here, in the child.
  task, shapes = task_and_shapes(task_name, batch)
  if smoke:  # the tiny preset's patches: small inputs, the same program structure
    shapes = {k: ((batch, 4, 32, 32, 3) if k == "video" else (batch, 32, 32, 3), d)
              if k in ("video", "image") else (s, d) for k, (s, d) in shapes.items()}
  tokens = tokens_per_example(get_config(preset), task, shapes)
  # Routing groups of the preset's group_size (IMP: 2048 tokens), or smaller where a device's
  # share of the batch cannot fill one: each device holds whole groups (moe.group_tokens).
  per_device = batch // jax.device_count()
  group_size = min(moe.examples_per_group(per_device, n, get_config(preset).group_size) * n
                   for n in tokens.values())
  config = TrainConfig(tasks=(task,), model=preset, model_overrides=(
      ("remat", policy), ("scan_layers", scan), ("dtype", dtype), ("group_size", group_size)))
  model_cfg = step.model_config(config, {})
  mesh = step.make_mesh(model_cfg)
  model, tx = Model(model_cfg, mesh=mesh), step.make_optimizer(config)

  def init(key):
    params = init_params(model_cfg, key)
    return {"params": params, "opt_state": tx.init(params)}

  key = jax.random.key(0)
  abstract = jax.eval_shape(init, key)
  if mesh is None:
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                             abstract)
  else:
    shardings = step.state_shardings(init, key, mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, shardings)

  def shard_bytes(tree):
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))

  fn = step.make_step(model, (task,), tx, config.seed)
  compiled = step.Compiled(fn, state, mesh, donate=True, log=lambda line: None)
  start, cpu = time.perf_counter(), _cpu_seconds()
  executable = compiled.prepare(task.name, (shapes,))
  total_s, cpu_s = time.perf_counter() - start, _cpu_seconds() - cpu
  memory = executable.memory_analysis()
  cost = executable.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  devices = jax.device_count()

  counts = {n: info.info(model_cfg, tokens=t) for n, t in tokens.items()}
  active = counts["media"]["active_params_per_token"]
  six_nd = 6 * active * batch * sum(tokens.values())
  with_attention = batch * sum(t * counts[n]["train_flops_per_token"]
                               for n, t in tokens.items())
  batch_bytes = sum(math.prod(s) * jnp.dtype(d).itemsize for s, d in shapes.values())
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  return dict(
      preset=preset, devices=devices, mesh=dict(mesh.shape) if mesh else None,
      remat=policy, scan_layers=scan, task=task_name, dtype=dtype, batch=batch,
      per_device_batch=batch // devices, tokens_per_example=tokens, group_size=group_size,
      total_params=counts["media"]["total_params"], active_params_per_token=active,
      params_bytes=shard_bytes(state["params"]),
      opt_state_bytes=shard_bytes(state["opt_state"]),
      batch_bytes=batch_bytes // devices,
      argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
      peak_bytes=peak,
      hlo_flops=cost.get("flops"), model_flops_6nd=six_nd / devices,
      model_flops_with_attention=with_attention / devices,
      compile_s=round(total_s, 1), compile_cpu_s=round(cpu_s, 1))


def _cpu_seconds() -> float:
  """This process's CPU time: on a shared machine a compile's wall time is the load's too."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def run_one(job: dict, timeout: float) -> dict:
  """`measure(**job)` in a fresh process with job["devices"] CPU devices."""
  env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, (
      os.environ.get("XLA_FLAGS"),
      f"--xla_force_host_platform_device_count={job['devices']}"))))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cached program would compile in no time
  child = {k: v for k, v in job.items() if k != "devices"}
  start = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(child)], env=env,
                          capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(job, error=f"timed out after {timeout:.0f} s")
  if proc.returncode:
    return dict(job, error=proc.stderr.strip().splitlines()[-1][:300])
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out["process_s"] = round(time.perf_counter() - start, 1)
  return out


def gb(x) -> str:
  return f"{x / 1e9:.2f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", nargs="+", default=list(PRESETS))
  parser.add_argument("--devices", nargs="+", type=int, default=[8, 64])
  parser.add_argument("--policies", nargs="+", default=["none", "full", "save_dots_no_batch"],
                      choices=REMAT)
  parser.add_argument("--scan", nargs="+", type=int, default=[1, 0], choices=[0, 1],
                      help="scan_layers values to compile (1: scanned, 0: unrolled)")
  parser.add_argument("--batch", nargs="+", type=int, default=[8192], help="global batches")
  parser.add_argument("--task", choices=["video_text", "image_text"], default="video_text")
  parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
  parser.add_argument("--timeout", type=float, default=600, help="seconds per compilation")
  parser.add_argument("--out", help="append each result to this JSON-lines file")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny preset, 8 devices, batch 16, remat full, scanned: seconds")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(**json.loads(args.child))))
    return
  if args.smoke:
    args.configs, args.devices, args.policies, args.scan, args.batch = (
        ["tiny"], [8], ["full"], [1], [16])
  jobs = [dict(preset=c, devices=d, policy=p, scan=bool(s), batch=b, task_name=args.task,
               dtype=args.dtype, smoke=args.smoke)
          for c in args.configs for d in args.devices for b in args.batch
          for p in args.policies for s in args.scan]
  results = []
  for job in jobs:
    r = run_one(job, args.timeout)
    print(json.dumps(r), flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(json.dumps(r) + "\n")
    results.append(r)
  print("\n| preset | devices | batch/device | remat | scan | params GB | opt state GB | "
        "temp GB | peak GB | HLO TFLOP | 6ND TFLOP | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    if "error" in r:
      print(f"| {r['preset']} | {r['devices']} | {r['batch'] // r['devices']} | {r['policy']} | "
            f"{int(r['scan'])} | {r['error']} |")
      continue
    print(f"| {r['preset']} | {r['devices']} | {r['per_device_batch']} | {r['remat']} | "
          f"{int(r['scan_layers'])} | {gb(r['params_bytes'])} | {gb(r['opt_state_bytes'])} | "
          f"{gb(r['temp_bytes'])} | {gb(r['peak_bytes'])} | {r['hlo_flops'] / 1e12:.1f} | "
          f"{r['model_flops_6nd'] / 1e12:.1f} | {r['compile_s']} |")
  failed = sum("error" in r for r in results)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
