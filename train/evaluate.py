"""Evaluation: IMP's protocols on a held-out split, each number named with its protocol.

    impax eval CONFIG --workdir RUN                     # each task on its eval_split: RUN/eval.json
    impax eval CONFIG --workdir RUN --split validation  # every task on validation: eval-validation.json
    impax eval CONFIG --workdir RUN --checkpoint best   # the run's best checkpoint (keep_best)
    impax eval CONFIG --workdir RUN --probe             # also a linear probe on frozen features

For each task whose dataset has the split, every example is read once with
deterministic preprocessing, and each task's "protocols" in eval.json says how
each of its numbers was made:
  - contrastive tasks: retrieval recall at 1, 5 and 10 in both directions
    (when both sides are real pairs, not label prompts); and, when one side
    is text and the dataset has labels, zero-shot classification: each class
    name goes through the prompt template into a text embedding, and an
    example's class is the one of highest cosine similarity;
  - classification tasks: top-1 accuracy of the task's head;
  - multi-view: a task with `eval_clips` x `eval_crops` > 1 views per video
    (IMP: 4 clips x 3 crops) averages each video's L2-normalised embeddings,
    and its logits, over the views; every figure then also has a
    "/single_view" twin, the centre clip at the centre crop;
  - linear probe (`--probe`, or the config's `linear_probe`): logistic regression
    on the frozen, single-view embeddings of the train split of each labelled
    dataset, its inverse regularisation chosen on the validation split,
    top-1 on the evaluated split. Embeddings are cached under
    RUN/embeddings/step-N/, so another probe does not run the encoder again.
"""

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import sentencepiece as spm
from jax.experimental import multihost_utils

from impax.datasets import decode, modalities, prepared, registry
from impax.model import sharding
from impax.train import checkpoint, inputs
from impax.train import config as config_lib
from impax.train import setup as setup_lib
from impax.train import step as step_lib
from impax.train.config import Task

CHECKPOINTS = ("latest", "best")  # `--checkpoint`: the run's last saved step, or keep_best's
PROBE_C = (0.01, 0.1, 1.0, 10.0, 100.0)  # the probe's inverse regularisation, chosen on validation


def recall_at(similarity: np.ndarray, ks=(1, 5, 10)) -> dict:
  """Recall@k of row i retrieving column i, for a square similarity matrix."""
  order = np.argsort(-similarity, axis=1, kind="stable")
  rank = np.argmax(order == np.arange(len(similarity))[:, None], axis=1)
  return {f"R@{k}": float(np.mean(rank < k)) for k in ks}


def zero_shot_accuracy(embeddings: np.ndarray, class_embeddings: np.ndarray,
                       labels: np.ndarray) -> float:
  similarity = _normalize(embeddings) @ _normalize(class_embeddings).T
  return float(np.mean(similarity.argmax(1) == labels))


def average_views(x: np.ndarray) -> np.ndarray:
  """[examples, views, ...] -> [examples, ...]: the mean over the views."""
  return x.mean(1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, test_x: np.ndarray | None = None,
                 test_y: np.ndarray | None = None) -> dict:
  """Logistic regression on standardised frozen features, fitted on train for each C;
  the C of the best validation top-1 (ties: the stronger regularisation) is kept.
  {"C", "validation_top1", "top1"}: top1 on the test features when given, else validation's."""
  from sklearn.linear_model import LogisticRegression  # only a probe pays its import
  from sklearn.preprocessing import StandardScaler
  scaler = StandardScaler().fit(train_x)
  train_x, val_x = scaler.transform(train_x), scaler.transform(val_x)
  fits = {c: LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y) for c in PROBE_C}
  scores = {c: float(np.mean(f.predict(val_x) == val_y)) for c, f in fits.items()}
  best = max(PROBE_C, key=lambda c: (scores[c], -c))
  out = {"C": best, "validation_top1": scores[best], "top1": scores[best]}
  if test_x is not None:
    out["top1"] = float(np.mean(fits[best].predict(scaler.transform(test_x)) == test_y))
  return out


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _gather(x):
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _forward(model, task: Task, names: tuple[str, ...]):
  """jit of params, batch -> {modality: normalised embeddings [b, views, d], "logits":
  [b, views, classes] (classification)}."""
  def fwd(params, batch):
    x = inputs.model_inputs(batch, names)
    heads = ({names[0]: task.name} if task.objective == "classification" else None)
    out = model.apply({"params": params}, x, train=False, heads=heads)
    result = {}
    for m in names:
      e = out[m]["embedding"]
      e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-6)
      b = batch[m].shape[0]
      result[m] = e.reshape(b, -1, e.shape[-1])
      if heads:
        logits = out[m]["logits"][task.name]
        result["logits"] = logits.reshape(b, -1, logits.shape[-1])
    return result
  return jax.jit(fwd)


@dataclasses.dataclass
class Context:
  """What every evaluation of one state shares: the config it evaluates (its tasks and
  splits), the set-up (the model, its config, the mesh and batch multiple: setup.setup's),
  the parameters, and the jitted forward passes (compiled once per task and shape, kept
  across evaluations)."""
  config: config_lib.TrainConfig
  setup: setup_lib.Setup
  params: object
  forwards: dict = dataclasses.field(default_factory=dict)
  embeddings_dir: str | None = None  # the probe's cache, for this state

  def forward(self, task: Task):
    if task.name not in self.forwards:
      self.forwards[task.name] = _forward(self.setup.model, task, task.modalities)
    return self.forwards[task.name]


def embed(ctx: Context, index: int, task: Task, labels: bool, fwd=None):
  """(arrays {modality: [n, views, d], "logits": [n, views, c], "label": [n]}, loader) of
  one pass over `task.eval_split` as the config's index-th task (`fwd`: another forward)."""
  config = dataclasses.replace(ctx.config, tasks=tuple(
      task if i == index else t for i, t in enumerate(ctx.config.tasks)))
  data = inputs.eval_loader(config, index, ctx.setup.model_cfg, labels=labels,
                            batch_multiple=ctx.setup.batch_multiple)
  fwd, mesh = fwd or ctx.forward(task), ctx.setup.mesh
  collected = {}
  for batch in data:
    out = fwd(ctx.params, step_lib.put(batch, mesh))
    valid = _gather(step_lib.put({"v": batch["valid"]}, mesh)["v"]) if mesh is not None \
        else batch["valid"]
    keep = {k: _gather(v)[valid] for k, v in out.items()}
    if labels:
      keep["label"] = (_gather(step_lib.put({"l": batch["label"]}, mesh)["l"]) if mesh is not None
                       else batch["label"])[valid]
    for k, v in keep.items():
      collected.setdefault(k, []).append(v)
  return {k: np.concatenate(v) for k, v in collected.items()}, data


def views_of(task: Task) -> int:
  return task.eval_clips * task.eval_crops if "video" in task.modalities else 1


def evaluate_task(ctx: Context, index: int, probe: bool = False) -> dict | None:
  task = ctx.config.tasks[index]
  # A mixture is evaluated on those of its datasets that hold the split; their labels and
  # tokenizer are one (the loader checks), so the first such dataset's serve all.
  held = [d for d in (prepared.open_dataset(root) for root, _ in task.datasets)
          if task.eval_split and task.eval_split in d.metadata.splits]
  if not held:
    return None
  dataset = held[0]
  has_labels = bool(dataset.labels)
  arrays, data = embed(ctx, index, task, has_labels)
  result = {"examples": int(len(next(iter(arrays.values())))), "split": task.eval_split}
  if data.num_records != result["examples"]:
    result["failed_records"] = data.num_records - result["examples"]
  if data.left_out:  # records without a modality the task reads: not evaluated
    result["records_left_out"] = data.left_out
  views = views_of(task)
  view_text = (f"{task.eval_clips} clips x {task.eval_crops} crops averaged" if views > 1
               else _single_view_text(task))
  protocols = {}
  figures, described = _figures(ctx, task, dataset, arrays, view_text)
  result.update(figures)
  protocols.update(described)
  if views > 1:  # IMP reports the single view beside the averaged views
    single = dataclasses.replace(task, eval_clips=1, eval_crops=1)
    arrays_1, _ = embed(ctx, index, single, has_labels)
    figures, described = _figures(ctx, single, dataset, arrays_1, _single_view_text(task))
    result.update({f"{k}/single_view": v for k, v in figures.items()})
    protocols.update({f"{k}/single_view": v for k, v in described.items()})
  if probe:
    for modality, figure in probe_task(ctx, index, dataset).items():
      key = f"linear_probe_top1/{modality}"
      result[key] = figure["top1"]
      view = _single_view_text(dataclasses.replace(task, modalities=(modality,)))
      protocols[key] = (f"linear probe: logistic regression on frozen {modality} embeddings "
                        f"of split {task.split!r} (C {figure['C']} chosen on "
                        f"{figure['chosen_on']!r}), top-1 over {len(dataset.labels)} classes, "
                        f"{view}")
  result["protocols"] = protocols
  return result


def _single_view_text(task: Task) -> str:
  if "video" in task.modalities:
    return "centre clip, centre crop"  # a clip's sound: its own window
  return "centre crop" if "image" in task.modalities else "centre window"


def _figures(ctx: Context, task: Task, dataset, arrays: dict, views: str) -> tuple[dict, dict]:
  """({figure: value}, {figure: its protocol}) of one pass's arrays."""
  has_labels = bool(dataset.labels)
  if task.objective == "classification":
    labels = arrays["label"]
    predicted = average_views(arrays["logits"]).argmax(1)
    hits = labels[np.arange(len(labels)), predicted] > 0 if task.multi_label else predicted == labels
    return ({"accuracy": float(np.mean(hits))},
            {"accuracy": f"classification head: top-1 over {len(dataset.labels)} classes"
                         + (" (a hit: any true label)" if task.multi_label else "")
                         + f", {views}"})
  embeddings = {m: average_views(arrays[m]) for m in task.modalities}
  figures, described = {}, {}
  a, b = task.modalities
  prompt_text = "text" in task.modalities and task.prompt is not None
  if not prompt_text:
    sim = embeddings[a] @ embeddings[b].T
    n = len(sim)
    for x, y, matrix in ((a, b, sim), (b, a, sim.T)):
      for k, v in recall_at(matrix).items():
        figures[f"{x}_to_{y}/{k}"] = v
        described[f"{x}_to_{y}/{k}"] = (f"retrieval: recall at {k[2:]} of each {x} finding its "
                                        f"{y} among the split's {n}, cosine similarity, {views}")
  if "text" in task.modalities and has_labels and not task.multi_label:
    other = a if b == "text" else b
    templates = zero_shot_templates(task, other)
    class_embeddings = class_text_embeddings(ctx.setup.model, ctx.params, dataset, templates,
                                             task.text_length, ctx.setup.mesh)
    figures["zero_shot_top1"] = zero_shot_accuracy(embeddings[other], class_embeddings,
                                                   arrays["label"])
    figures["zero_shot_chance"] = 1.0 / len(dataset.labels)
    described["zero_shot_top1"] = (f"zero-shot classification: top-1 over "
                                   f"{len(dataset.labels)} classes, cosine similarity to the "
                                   f"{_prompts_text(templates)} for each class, {views}")
    described["zero_shot_chance"] = f"one over the {len(dataset.labels)} classes"
  return figures, described


# -- linear probe ----------------------------------------------------------------

def probe_task(ctx: Context, index: int, dataset) -> dict[str, dict]:
  """{modality: linear_probe's result} for each non-text modality of a task whose dataset
  has single labels, its train split and the evaluated split; {} otherwise."""
  task = ctx.config.tasks[index]
  splits = dataset.metadata.splits
  if not dataset.labels or task.multi_label or task.split not in splits:
    return {}
  chosen_on = "validation" if "validation" in splits else task.eval_split
  out = {}
  for modality in task.modalities:
    if modality == "text":
      continue
    features = {s: cached_embeddings(ctx, index, modality, s)
                for s in dict.fromkeys((task.split, chosen_on, task.eval_split))}
    test = features[task.eval_split] if task.eval_split != chosen_on else (None, None)
    out[modality] = {**linear_probe(*features[task.split], *features[chosen_on], *test),
                     "chosen_on": chosen_on}
  return out


def cached_embeddings(ctx: Context, index: int, modality: str,
                      split: str) -> tuple[np.ndarray, np.ndarray]:
  """(single-view embeddings [n, d], labels [n]) of one modality of a task over a split,
  from the cache when it has them (keyed by dataset, split, modality, shape, step)."""
  task = ctx.config.tasks[index]
  single = dataclasses.replace(task, eval_split=split, eval_clips=1, eval_crops=1,
                               modalities=(modality,), objective="contrastive")
  bucket = task.eval_bucket or task.buckets[0]
  where = [root if "://" in root else os.path.abspath(root) for root, _ in task.datasets]
  key = json.dumps([where[0] if len(where) == 1 else where, split, modality, str(bucket),
                    task.sample_rate], sort_keys=True)
  path = None
  if ctx.embeddings_dir:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = os.path.join(ctx.embeddings_dir, f"{task.name}-{modality}-{split}-{digest}.npz")
    if os.path.exists(path):
      with np.load(path) as cached:
        return cached["embeddings"], cached["labels"]
  # The encoder alone: a one-modality "task" that no head and no text reads.
  forward_key = (task.name, modality)
  if forward_key not in ctx.forwards:
    ctx.forwards[forward_key] = _forward(ctx.setup.model, single, (modality,))
  arrays, _ = embed(ctx, index, single, labels=True, fwd=ctx.forwards[forward_key])
  embeddings, labels = average_views(arrays[modality]), arrays["label"]
  if path and jax.process_index() == 0:
    os.makedirs(ctx.embeddings_dir, exist_ok=True)
    np.savez(path + ".tmp.npz", embeddings=embeddings, labels=labels)
    os.replace(path + ".tmp.npz", path)
  return embeddings, labels


def zero_shot_templates(task: Task, other: str) -> tuple[str, ...]:
  """The prompt templates a task's zero-shot classification of `other` (a modality) uses."""
  return task.zero_shot_prompts or (task.prompt or registry.PROMPTS[modalities.NEEDS[other]],)


def _prompts_text(templates: tuple[str, ...]) -> str:
  if len(templates) == 1:
    return f"text embedding of {templates[0]!r}"
  return (f"mean L2-normalised text embedding of {len(templates)} prompts "
          f"({templates[0]!r}, ...)")


def class_text_embeddings(model, params, dataset, templates: tuple[str, ...], length: int,
                          mesh) -> np.ndarray:
  """[classes, d]: each class name's text embedding through the templates, L2-normalised and
  averaged over them (with several, CLIP's prompt ensemble)."""
  tokenizer = spm.SentencePieceProcessor(model_file=dataset.tokenizer_path)
  texts = [t.format(label=name) for t in templates for name in dataset.labels]
  tokens, masks = zip(*(decode.pad_tokens(tokenizer.encode(text), length) for text in texts))
  tokens, masks = np.stack(tokens), np.stack(masks)
  n = len(tokens)
  # Rows padded so that the batch splits into routing groups of whole names that every
  # device holds whole (moe.group_tokens): as many names as a group takes, per shard.
  shards = sharding.batch_shards(mesh)
  pad = -len(tokens) % (shards * max(1, model.config.group_size // length))
  tokens = np.concatenate([tokens, np.zeros((pad, length), np.int32)])
  masks = np.concatenate([masks, np.zeros((pad, length), np.int32)])
  masks[n:, 0] = 1  # padding rows: one token so the mean is defined
  batch = {"text": tokens, "text_mask": masks}
  if mesh is not None:
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
  out = jax.jit(lambda p, x: model.apply({"params": p}, x)["text"]["embedding"])(params, batch)
  per_template = _gather(out)[:n].reshape(len(templates), len(dataset.labels), -1)
  return _normalize(per_template).mean(0)


# -- a state, a split, a checkpoint ------------------------------------------------

def on_split(config, split: str | None):
  """The config with every task evaluated on `split` (None: each task's own eval_split)."""
  if split is None:
    return config
  return dataclasses.replace(config, tasks=tuple(
      dataclasses.replace(t, eval_split=split) for t in config.tasks))


def evaluate_state(ctx: Context, log=print, probe: bool = False) -> dict:
  results = {}
  for i, task in enumerate(ctx.config.tasks):
    result = evaluate_task(ctx, i, probe=probe)
    if result is not None:
      results[task.name] = result
      log(f"eval {task.name}: " + ", ".join(
          f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
          if k != "protocols"))
  return results


def metric(results: dict, name: str) -> float:
  """The figure "TASK/METRIC" (e.g. "video_text/zero_shot_top1") of evaluate_state's results."""
  task, _, key = name.partition("/")
  value = results.get(task, {}).get(key)
  if not isinstance(value, float):
    have = sorted(f"{t}/{k}" for t, r in results.items() for k, v in r.items()
                  if isinstance(v, float))
    raise config_lib.ConfigError(f"keep_best {name!r}: the evaluation has no such figure; "
                                 f"it has {', '.join(have) or 'none'}")
  return value


def write(workdir: str, step: int, results: dict, split: str | None = None,
          checkpoint_name: str = "latest") -> str:
  """WORKDIR/eval.json: each task on its eval_split; eval-SPLIT.json: every task on SPLIT."""
  path = os.path.join(workdir, "eval.json" if split is None else f"eval-{split}.json")
  with open(path, "w") as f:
    json.dump({"step": step, "checkpoint": checkpoint_name, "results": results}, f, indent=2,
              sort_keys=True)
  return path


def main(config_path: str, workdir: str, overrides=(), log=print, split: str | None = None,
         checkpoint_name: str = "latest", probe: bool = False) -> dict:
  """Evaluates a checkpoint in workdir; writes and returns eval.json's content.
  `split`: every task on that split of its dataset instead (a task whose dataset has no
  such split is left out), written to eval-SPLIT.json."""
  return evaluate_checkpoint(config_lib.load(config_path, list(overrides)), workdir, log=log,
                             split=split, checkpoint_name=checkpoint_name, probe=probe)


def checkpoint_dir(workdir: str, name: str) -> str:
  """Where a run keeps its checkpoints: "latest" (every checkpoint_every) or "best"."""
  if name not in CHECKPOINTS:
    raise config_lib.ConfigError(f"checkpoint must be one of {CHECKPOINTS}, not {name!r}")
  return os.path.join(workdir, "checkpoints" if name == "latest" else "best")


def evaluate_checkpoint(config, workdir: str, log=print, split: str | None = None,
                        checkpoint_name: str = "latest", probe: bool = False) -> dict:
  """Evaluates a run's checkpoint on each task's eval_split, as `impax eval` does; writes
  WORKDIR/eval.json (eval-SPLIT.json with `split`) and returns its content.

      import impax
      config = impax.load_config("train/configs/demo.py:demo-output/data")
      impax.evaluate(config, "demo-output/run")                   # the latest checkpoint
      impax.evaluate(config, "demo-output/run", split="validation", checkpoint_name="best")

  Returns {"step", "checkpoint", "results": {task: figures}}; probe: linear probes too.
  """
  config = on_split(config, split)
  setup = setup_lib.setup(config, loaders=False)  # each task's evaluation opens its own
  tx = step_lib.make_optimizer(config)
  target = step_lib.init_state(config, setup.model_cfg, tx, setup.mesh)
  directory = checkpoint_dir(workdir, checkpoint_name)
  ckpt = checkpoint.Checkpoints(directory, config.keep_checkpoints, create=False)
  restored = ckpt.restore_latest(target)
  ckpt.close()
  if restored is None:
    raise config_lib.ConfigError(
        f"{directory} holds no checkpoint: " + ("train first" if checkpoint_name == "latest"
                                                 else "train with keep_best set"))
  state, _, meta = restored
  ctx = Context(config, setup, state["params"],
                embeddings_dir=os.path.join(workdir, "embeddings", f"step-{meta['step']}"))
  results = evaluate_state(ctx, log=log, probe=probe)
  if split is not None and not results:
    raise config_lib.ConfigError(f"no task's dataset has a split {split!r}")
  path = write(workdir, meta["step"], results, split, checkpoint_name)
  log(f"wrote {path}")
  return {"step": meta["step"], "checkpoint": checkpoint_name, "results": results}
