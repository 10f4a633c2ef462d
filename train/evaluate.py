"""Evaluation: zero-shot classification, retrieval and supervised accuracy on held-out splits.

    impax eval train/configs/demo.py:demo-output/data --workdir /tmp/run   # -> /tmp/run/eval.json

For each task whose dataset has its `eval_split`, every example is read once
with deterministic preprocessing (centre crop; `eval_clips` uniformly spaced
clips per video, their embeddings averaged):
  - contrastive tasks: retrieval recall at 1, 5 and 10 in both directions
    (when both sides are real pairs, not label prompts); and, when one side
    is text and the dataset has labels, zero-shot classification: each class
    name goes through the prompt template into a text embedding, and an
    example's class is the one of highest cosine similarity;
  - classification tasks: top-1 accuracy of the task's head.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import sentencepiece as spm
from jax.experimental import multihost_utils

from impax.datasets import decode, modalities, prepared, registry
from impax.model import Model, sharding
from impax.train import checkpoint, inputs
from impax.train import config as config_lib
from impax.train import step as step_lib
from impax.train.config import Task


def recall_at(similarity: np.ndarray, ks=(1, 5, 10)) -> dict:
  """Recall@k of row i retrieving column i, for a square similarity matrix."""
  order = np.argsort(-similarity, axis=1, kind="stable")
  rank = np.argmax(order == np.arange(len(similarity))[:, None], axis=1)
  return {f"R@{k}": float(np.mean(rank < k)) for k in ks}


def zero_shot_accuracy(embeddings: np.ndarray, class_embeddings: np.ndarray,
                       labels: np.ndarray) -> float:
  similarity = _normalize(embeddings) @ _normalize(class_embeddings).T
  return float(np.mean(similarity.argmax(1) == labels))


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _gather(x):
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _forward(model, task: Task, names: tuple[str, ...]):
  def fwd(params, batch):
    x = inputs.model_inputs(batch, names)
    heads = ({names[0]: task.name} if task.objective == "classification" else None)
    out = model.apply({"params": params}, x, train=False, heads=heads)
    result = {}
    for m in names:
      e = out[m]["embedding"]
      e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-6)
      b = batch[m].shape[0]
      result[m] = e.reshape(b, -1, e.shape[-1]).mean(1)  # average over clips
      if heads:
        result["logits"] = out[m]["logits"][task.name]
    return result
  return jax.jit(fwd)


def evaluate_task(task: Task, index: int, config, model, params, model_cfg, mesh) -> dict | None:
  dataset = prepared.open_dataset(task.dataset)
  if not task.eval_split or task.eval_split not in dataset.metadata.splits:
    return None
  has_labels = bool(dataset.labels)
  data = inputs.eval_loader(config, index, model_cfg,
                            batch_multiple=inputs.batch_multiple(config, sharding.batch_shards(mesh)),
                            labels=has_labels)
  fwd = _forward(model, task, task.modalities)
  collected = {}
  for batch in data:
    out = fwd(params, step_lib.put(batch, mesh))
    valid = _gather(step_lib.put({"v": batch["valid"]}, mesh)["v"]) if mesh is not None \
        else batch["valid"]
    keep = {k: _gather(v)[valid] for k, v in out.items()}
    if has_labels:
      keep["label"] = (_gather(step_lib.put({"l": batch["label"]}, mesh)["l"]) if mesh is not None
                       else batch["label"])[valid]
    for k, v in keep.items():
      collected.setdefault(k, []).append(v)
  arrays = {k: np.concatenate(v) for k, v in collected.items()}
  result = {"examples": int(len(next(iter(arrays.values())))), "split": task.eval_split}
  if data.num_records != result["examples"]:
    result["failed_records"] = data.num_records - result["examples"]
  if data.left_out:  # records without a modality the task reads: not evaluated
    result["records_left_out"] = data.left_out

  if task.objective == "classification":
    labels = arrays["label"]
    predicted = arrays["logits"].argmax(1)
    hits = labels[np.arange(len(labels)), predicted] > 0 if task.multi_label else predicted == labels
    result["accuracy"] = float(np.mean(hits))
    return result

  a, b = task.modalities
  prompt_text = "text" in task.modalities and task.prompt is not None
  if not prompt_text:
    sim = arrays[a] @ arrays[b].T
    result.update({f"{a}_to_{b}/{k}": v for k, v in recall_at(sim).items()})
    result.update({f"{b}_to_{a}/{k}": v for k, v in recall_at(sim.T).items()})
  if "text" in task.modalities and has_labels and not task.multi_label:
    other = a if b == "text" else b
    template = task.prompt or registry.PROMPTS[modalities.NEEDS[other]]
    class_embeddings = class_text_embeddings(model, params, dataset, template, task.text_length,
                                             mesh)
    result["zero_shot_top1"] = zero_shot_accuracy(arrays[other], class_embeddings,
                                                  arrays["label"])
    result["zero_shot_chance"] = 1.0 / len(dataset.labels)
  return result


def class_text_embeddings(model, params, dataset, template: str, length: int, mesh) -> np.ndarray:
  tokenizer = spm.SentencePieceProcessor(model_file=dataset.tokenizer_path)
  tokens, masks = zip(*(decode.pad_tokens(tokenizer.encode(template.format(label=name)), length)
                        for name in dataset.labels))
  tokens, masks = np.stack(tokens), np.stack(masks)
  shards = sharding.batch_shards(mesh)
  pad = -len(tokens) % shards
  tokens = np.concatenate([tokens, np.zeros((pad, length), np.int32)])
  masks = np.concatenate([masks, np.zeros((pad, length), np.int32)])
  masks[len(dataset.labels):, 0] = 1  # padding rows: one token so the mean is defined
  batch = {"text": tokens, "text_mask": masks}
  if mesh is not None:
    batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
  out = jax.jit(lambda p, x: model.apply({"params": p}, x)["text"]["embedding"])(params, batch)
  return _gather(out)[:len(dataset.labels)]


def evaluate_state(config, model, params, model_cfg, mesh, log=print) -> dict:
  results = {}
  for i, task in enumerate(config.tasks):
    result = evaluate_task(task, i, config, model, params, model_cfg, mesh)
    if result is not None:
      results[task.name] = result
      log(f"eval {task.name}: " + ", ".join(
          f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
  return results


def write(workdir: str, step: int, results: dict, split: str | None = None) -> str:
  """WORKDIR/eval.json: each task on its eval_split; eval-SPLIT.json: every task on SPLIT."""
  path = os.path.join(workdir, "eval.json" if split is None else f"eval-{split}.json")
  with open(path, "w") as f:
    json.dump({"step": step, "results": results}, f, indent=2, sort_keys=True)
  return path


def main(config_path: str, workdir: str, overrides=(), log=print, split: str | None = None) -> dict:
  """Evaluates the latest checkpoint in workdir; writes and returns eval.json's content.
  `split`: every task on that split of its dataset instead (a task whose dataset has no
  such split is left out), written to eval-SPLIT.json."""
  return evaluate_checkpoint(config_lib.load(config_path, list(overrides)), workdir, log=log,
                             split=split)


def evaluate_checkpoint(config, workdir: str, log=print, split: str | None = None) -> dict:
  if split is not None:
    config = dataclasses.replace(config, tasks=tuple(
        dataclasses.replace(t, eval_split=split) for t in config.tasks))
  model_cfg = step_lib.model_config(config, inputs.check_datasets(config))
  mesh = step_lib.make_mesh(model_cfg)
  model = Model(model_cfg, mesh=mesh)
  tx = step_lib.make_optimizer(config)
  target = step_lib.init_state(config, model_cfg, tx, mesh)
  ckpt = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  restored = ckpt.restore_latest(target)
  ckpt.close()
  if restored is None:
    raise config_lib.ConfigError(f"{workdir}/checkpoints holds no checkpoint: train first")
  state, _, meta = restored
  results = evaluate_state(config, model, state["params"], model_cfg, mesh, log=log)
  if split is not None and not results:
    raise config_lib.ConfigError(f"no task's dataset has a split {split!r}")
  path = write(workdir, meta["step"], results, split)
  log(f"wrote {path}")
  return {"step": meta["step"], "results": results}
