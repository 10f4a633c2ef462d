"""Training metrics: WORKDIR/metrics.jsonl, TensorBoard event files, PNG curves, a progress line.

metrics.jsonl has one object per (log step, task): the means since the last
log of loss, accuracy, step time and tokens per second, the batch shapes seen;
the optimizer's diagnostics (grad_norm before clipping, clipped: the share of
steps clipped, update_norm, param_norm, learning_rate), a contrastive pair's
temperature; and per modality and MoE layer the experts' load (fraction of
routed tokens per expert), the dropped fraction and the router's z_loss and
load_balance_loss (train/step.py). Evaluation results are lines with "eval". A
resumed run first drops the lines past its checkpoint, so the file reads as if
the run had never stopped. TensorBoard gets every number (a list as one scalar per
element: `.../fraction/2` is expert 2's load); plots/ the curves (plot()).
"""

import collections
import json
import os
import sys
import time

import numpy as np


class Writer:
  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
    """`enabled` False (processes other than the first of a multi-host run): writes nothing."""
    self.workdir, self.enabled = workdir, enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if enabled and os.path.exists(self.path):  # keep what the checkpoint covers
      with open(self.path) as f:
        kept = [line for line in f if json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    self.pending = collections.defaultdict(list)
    self._tb = None

  def add(self, step: int, task: str, stats: dict, *, tokens: int, seconds: float, shape: str):
    self.pending[task].append((stats, tokens, seconds, shape))

  def flush(self, step: int):
    rows = []
    for task, items in sorted(self.pending.items()):
      row = {"step": step, "task": task, "steps": len(items)}
      keys = items[0][0].keys()
      for key in keys:
        values = np.stack([np.asarray(s[key], np.float64) for s, *_ in items])
        mean = values.mean(0)
        row[key] = mean.tolist() if mean.ndim else float(mean)
      seconds = sum(s for _, _, s, _ in items)
      row["step_seconds"] = seconds / len(items)
      row["tokens_per_second"] = sum(t for _, t, _, _ in items) / max(seconds, 1e-9)
      row["shapes"] = dict(collections.Counter(shape for *_, shape in items))
      rows.append(row)
    self.pending.clear()
    self._write(rows)

  def add_skipped(self, step: int, task: str, shape: str):
    """A line {"step", "task", "nonfinite": 1, "shapes"}: a step whose loss or gradient was
    not finite, and whose update was skipped (it has no "loss": curves leave it out)."""
    self._write([{"step": step, "task": task, "nonfinite": 1, "shapes": {shape: 1}}])

  def add_eval(self, step: int, results: dict, split: str | None = None):
    """A line {"step", "eval": {task: figures}, "split"}: the periodic evaluation's."""
    self._write([{"step": step, "eval": results, **({"split": split} if split else {})}])

  def _write(self, rows):
    if not rows or not self.enabled:
      return
    with open(self.path, "a") as f:
      for row in rows:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    self._tensorboard(rows)

  def _tensorboard(self, rows):
    if self._tb is None:
      from tensorboardX import SummaryWriter  # only a process that logs imports it
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
    for row in rows:
      for key, value in _flat(row):
        self._tb.add_scalar(key, value, global_step=row["step"])
    self._tb.flush()

  def close(self, plots: bool = True):
    if self._tb is not None:
      self._tb.close()
    if plots and self.enabled:
      plot(self.path, os.path.join(self.workdir, "plots"))


class BatchIds:
  """WORKDIR/batches.jsonl (`log_batch_ids`): which examples made each step, one line per
  (step, task): {"step", "task", "shape", "ids"} (the valid examples' ids, in batch order)
  and, for a mixture, "dataset" (each one's dataset, as the task lists them). A loss spike
  at step N is traced to its data here. Every process writes the ids of its own slice of
  the batch: process p > 0 of a multi-host run to batches-process{p}.jsonl. As metrics.jsonl,
  a resumed run first drops the lines past its checkpoint."""

  def __init__(self, workdir: str, resume_step: int = 0, process_index: int = 0):
    name = "batches.jsonl" if process_index == 0 else f"batches-process{process_index}.jsonl"
    self.path = os.path.join(workdir, name)
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if json.loads(line)["step"] <= resume_step]
    self._file = open(self.path, "w")
    self._file.writelines(kept)

  def add(self, step: int, task: str, batch: dict, shape: str, roots: tuple[str, ...]):
    valid = np.asarray(batch["valid"], bool)
    row = {"step": step, "task": task, "shape": shape,
           "ids": [str(i) for i in np.asarray(batch["id"])[valid]]}
    if "dataset" in batch:
      row["dataset"] = [roots[d] for d in np.asarray(batch["dataset"])[valid]]
    self._file.write(json.dumps(row) + "\n")

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def _flat(row: dict):
  task = row.get("task")
  if "eval" in row:
    prefix = f"eval/{row['split']}" if "split" in row else "eval"
    for name, results in row["eval"].items():
      for key, value in results.items():
        if isinstance(value, (int, float)):
          yield f"{prefix}/{name}/{key}", value
    return
  for key, value in row.items():
    if key in ("step", "task", "steps", "shapes"):
      continue
    name = f"{task}/{key}"
    if isinstance(value, list):  # one per expert
      for i, v in enumerate(value):
        yield f"{name}/{i}", v
    else:
      yield name, value


def read(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


# The diagnostics' figure: (metrics.jsonl key, how a row gives it, log scale), one panel each.
DIAGNOSTICS = (
    ("grad_norm", lambda r: r.get("grad_norm"), True),
    ("clipped (share of steps)", lambda r: r.get("clipped"), False),
    ("update_norm / param_norm",
     lambda r: r["update_norm"] / r["param_norm"] if r.get("param_norm") else None, True),
    ("learning_rate", lambda r: r.get("learning_rate"), False),
    ("temperature", lambda r: r.get("temperature"), True),
    ("busiest expert's load", lambda r: _over_layers(r, "fraction", max), False),
    ("dropped tokens (share)", lambda r: _over_layers(r, "dropped", np.mean), False),
    ("router z_loss", lambda r: _over_layers(r, "z_loss", np.mean), True),
    ("load_balance_loss", lambda r: _over_layers(r, "load_balance_loss", np.mean), False),
)


def _over_layers(row: dict, stat: str, reduce):
  """A statistic of every MoE layer of the row reduced to one number (None: no MoE)."""
  values = [reduce(v) for k, v in row.items() if k.startswith("experts/") and k.endswith(f"/{stat}")]
  return float(reduce(values)) if values else None


def plot(metrics_path: str, out_dir: str) -> list[str]:
  """PNG training curves from metrics.jsonl: loss.png and accuracy.png per task, and
  diagnostics.png (the optimizer's and the routers' statistics per task, DIAGNOSTICS)."""
  if not os.path.exists(metrics_path):
    return []
  import matplotlib  # heavy: only for the plots at the end
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in read(metrics_path) if r.get("task")]
  tasks = sorted({r["task"] for r in rows})
  os.makedirs(out_dir, exist_ok=True)

  def curves(ax, title: str, value, log: bool = False) -> bool:
    drawn = False
    for task in tasks:
      points = [(r["step"], v) for r in rows if r["task"] == task
                for v in [value(r)] if v is not None]
      if points:
        ax.plot(*zip(*points), label=task)
        drawn = True
    if drawn and log and all(v > 0 for r in rows for v in [value(r)] if v is not None):
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return drawn

  def save(fig, name: str) -> str:
    for ax in fig.axes:  # task names as written: `$` is no mathtext (tick labels need it)
      for text in ax.get_legend().get_texts() if ax.get_legend() else ():
        text.set_parse_math(False)
        text.set_usetex(False)
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

  written = []
  for key in ("loss", "accuracy"):
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    curves(ax, f"training {key} per task", lambda r, key=key: r.get(key))
    ax.set_ylabel(key)
    ax.legend(fontsize=8)
    written.append(save(fig, f"{key}.png"))
  fig, axes = plt.subplots(3, 3, figsize=(13, 10), dpi=90)
  drawn = [curves(ax, title, value, log) for ax, (title, value, log) in zip(axes.flat, DIAGNOSTICS)]
  if any(drawn):
    axes.flat[drawn.index(True)].legend(fontsize=7)
    written.append(save(fig, "diagnostics.png"))
  else:
    plt.close(fig)
  return written


class Progress:
  """One line on a terminal (redrawn), a line per 5% in a log."""

  def __init__(self, total: int, start: int, enabled: bool = True):
    self.total, self.start, self.t0 = total, start, time.monotonic()
    self.tty, self.enabled = sys.stderr.isatty(), enabled
    self.next_report = start

  def update(self, step: int, task: str, loss: float):
    if not self.enabled:
      return
    done = step - self.start
    rate = done / max(time.monotonic() - self.t0, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    line = (f"step {step}/{self.total} [{'#' * int(30 * step / self.total):<30}] "
            f"{task} loss {loss:.3f}  {rate:.1f} steps/s  eta {eta:.0f} s")
    if self.tty:
      print("\r" + line, end="", file=sys.stderr, flush=True)
    elif step >= self.next_report or step == self.total:
      print(line, file=sys.stderr, flush=True)
      self.next_report = step + max(1, self.total // 20)

  def close(self):
    if self.tty and self.enabled:
      print(file=sys.stderr)
