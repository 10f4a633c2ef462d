"""What the model reads: the tasks' loaders, and their batches made into model inputs.

    loaders = inputs.open_loaders(config, model_cfg, batch_multiple=2)
    batch = next(iter(loaders["video_text"]))           # uint8 pixels, log-mel, token ids
    x = inputs.model_inputs(batch, ("video", "text"))   # the model's input contract

Each task's dataset is checked before anything is read: it must serve the
task (its metadata lists the tasks its data can serve), hold labels for a
classification, share one tokenizer with every other text task (one no larger
than the model's vocabulary), and give buckets no smaller than one patch of the
model.
"""

import hashlib
import json
import math
import os

import jax
import jax.numpy as jnp

from impax.datasets import decode, modalities, prepared
from impax.datasets import loader as loader_lib
from impax.model import get_config as model_preset
from impax.train.config import ConfigError, Task, TrainConfig


def patches_of(model_cfg) -> loader_lib.Patches:
  return loader_lib.Patches(tubelet=model_cfg.tubelet, spectrogram=model_cfg.spectrogram_patch,
                            waveform=model_cfg.waveform_patch)


def task_seed(config: TrainConfig, index: int) -> int:
  """The loader seed of the config's index-th task: tasks draw independent streams."""
  return config.seed * 1000 + index


def check_buckets(task: Task, model_cfg) -> None:
  """A bucket the model cannot take (smaller than one patch) is refused by name."""
  t, ph, pw = model_cfg.tubelet
  for i, b in enumerate(task.buckets + ((task.eval_bucket,) if task.eval_bucket else ())):
    where = f"task {task.name!r} bucket {i}"
    if "video" in task.modalities and b.video and (
        b.video[0] < t or b.video[1] < ph or b.video[2] < pw):
      raise ConfigError(f"{where}: video {b.video} is smaller than the model's tubelet "
                        f"{model_cfg.tubelet}")
    if "image" in task.modalities and b.image and (b.image[0] < ph or b.image[1] < pw):
      raise ConfigError(f"{where}: image {b.image} is smaller than a {ph}x{pw} patch")
    if "spectrogram" in task.modalities and b.audio_seconds:
      if decode.spectrogram_frames(b.audio_seconds) < model_cfg.spectrogram_patch[0]:
        raise ConfigError(f"{where}: {b.audio_seconds} s of audio is shorter than one "
                          "spectrogram patch")


def batch_multiple(config: TrainConfig, batch_shards: int) -> int:
  """The config's batch_multiple, once the hardware is known to divide it: `batch_shards`
  pieces of each batch (the mesh's data-parallel devices), and the processes. A batch size
  never depends on the hardware: a mesh that would need another is refused."""
  need = math.lcm(batch_shards, jax.process_count())
  if config.batch_multiple % need:
    raise ConfigError(
        f"batch_multiple {config.batch_multiple} does not split over this run's {batch_shards} "
        f"batch shards and {jax.process_count()} process(es): each batch must divide into "
        f"{need}. Set batch_multiple={math.lcm(config.batch_multiple, need)} in the config (or "
        f"--set batch_multiple={math.lcm(config.batch_multiple, need)}); keep it the same "
        "wherever the config runs, so that its batches are the same")
  return config.batch_multiple


def bucket_text(bucket: loader_lib.Bucket) -> str:
  """A bucket's shapes as a log line names them: `video 4x32x32`, `image 32x32`, `audio 0.64 s`."""
  parts = [f"{name} {'x'.join(map(str, shape))}" for name, shape in
           (("video", bucket.video), ("image", bucket.image)) if shape]
  if bucket.audio_seconds:
    parts.append(f"audio {bucket.audio_seconds:g} s")
  return " + ".join(parts) or "no media"


def open_loaders(config: TrainConfig, model_cfg, *, batch_multiple: int
                 ) -> dict[str, loader_lib.Loader]:
  """The training loader of every task; a task its dataset cannot serve is refused by name."""
  out = {}
  for i, task in enumerate(config.tasks):
    try:
      out[task.name] = loader_lib.Loader(
          task, seed=task_seed(config, i), batch_multiple=batch_multiple,
          patches=patches_of(model_cfg), process_index=jax.process_index(),
          process_count=jax.process_count())
    except (loader_lib.LoaderError, ValueError) as e:
      raise ConfigError(str(e)) from e  # the loader's messages name the task
    for dataset in out[task.name].datasets:
      check_served(task, dataset)
  return out


def eval_loader(config: TrainConfig, index: int, model_cfg, *, batch_multiple: int,
                labels: bool) -> loader_lib.Loader:
  """The evaluation pass of the config's index-th task over its eval_split, in this process."""
  return loader_lib.Loader(
      config.tasks[index], train=False, labels=labels, seed=task_seed(config, index),
      batch_multiple=batch_multiple, patches=patches_of(model_cfg),
      process_index=jax.process_index(), process_count=jax.process_count(), num_workers=0,
      nice=10)


def check_served(task: Task, dataset: prepared.PreparedDataset) -> None:
  """Refuses a task that none of the dataset's tasks (metadata.json "tasks") serves: the
  same objective over the same stored media (a spectrogram and a waveform are audio)."""
  media = {modalities.NEEDS[m] if m != "text" else "text" for m in task.modalities}
  served = dataset.metadata.tasks
  if any(t.objective == task.objective and set(t.modalities) == media for t in served):
    return
  offered = ", ".join(f"{t.name} ({'+'.join(t.modalities)}, {t.objective})" for t in served)
  raise ConfigError(f"task {task.name!r}: {dataset.root} serves no {task.objective} task of "
                    f"{'+'.join(sorted(media))}; its data serves {offered or 'no task'}")


def check_datasets(config: TrainConfig) -> dict[str, int]:
  """Opens each task's dataset; refuses a classification without labels, text tasks whose
  datasets' tokenizers differ, and a tokenizer with more pieces than the model's text
  embedding has rows (JAX would clamp the ids past it to the last row: a run that trains,
  on wrong text). Returns each task's number of labels."""
  out, tokenizers = {}, {}
  vocabulary = model_preset(config.model, **dict(config.model_overrides)).vocab_size
  for task in config.tasks:
    if task.exclude and not os.path.isfile(task.exclude):
      raise ConfigError(f"task {task.name!r}: exclude file {task.exclude} does not exist; write "
                        "one with `impax dedup ... --json PATH` or list ids one a line")
    for root, _ in task.datasets:  # each of a mixture's
      dataset = prepared.open_dataset(root)
      if task.objective == "classification" and not dataset.labels:
        raise ConfigError(f"task {task.name!r} is a classification but {root} has no labels")
      out[task.name] = len(dataset.labels)
      if "text" not in task.modalities:
        continue
      tokenizer = dataset.metadata.tokenizer
      if tokenizer and tokenizer.vocab_size > vocabulary:
        raise ConfigError(
            f"task {task.name!r}: {root} is tokenized by {dataset.tokenizer_path}, of "
            f"{tokenizer.vocab_size} pieces, but model {config.model!r} has a vocabulary of "
            f"{vocabulary} (vocab_size): set model_overrides=((\"vocab_size\", "
            f"{tokenizer.vocab_size}),), or build the data with a tokenizer of at most "
            f"{vocabulary} pieces")
      digest = tokenizer.sha256 if tokenizer else None
      tokenizers.setdefault(digest, []).append(f"{task.name!r} ({root})")
  if len(tokenizers) > 1:
    # One text embedding table: the same id must mean the same piece in every task.
    found = "; ".join(f"{', '.join(tasks)} by tokenizer {(digest or 'none')[:12]}"
                      for digest, tasks in tokenizers.items())
    raise ConfigError(
        f"the tasks' text is tokenized by different tokenizers ({found}), but the model has "
        "one text embedding table. Build these datasets with one tokenizer: "
        "`impax build ... --tokenizer PATH` with the same SentencePiece model for each.")
  return out


def data_versions(config: TrainConfig) -> dict[str, str]:
  """{dataset: its metadata.json's content hash}: the data a run trains on (each dataset
  once, however many tasks read it)."""
  return {d: prepared.open_dataset(d, check_counts=False).metadata.content_hash
          for d in dict.fromkeys(root for t in config.tasks for root, _ in t.datasets)}


def data_version(config: TrainConfig) -> str:
  """12 hex digits naming the data of all the config's datasets together."""
  versions = sorted(data_versions(config).items())
  return hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:12]


def model_inputs(batch: dict, names) -> dict:
  """A batch as the model reads it (model/embed.py's input contract):

    image, video  float32 in [-1, 1] (uint8 pixels * 2/255 - 1, as big_vision feeds ViTs);
                  evaluation clips [b, clips, ...] become [b * clips, ...]
    spectrogram   float32 log-mel, standardized per example (zero mean, unit variance)
    waveform      float32 in [-1, 1], as the loader makes it
    text          int32 token ids with "text_mask"
  """
  out = {}
  for m in names:
    x = batch[m]
    if m in modalities.VISION:
      x = x.astype(jnp.float32) * (2 / 255.0) - 1.0  # [-1, 1], as big_vision feeds ViTs
      if x.ndim == (6 if m == "video" else 5):  # evaluation clips: [b, clips, ...] -> [b*clips, ...]
        x = x.reshape(-1, *x.shape[2:])
    elif m == "spectrogram":
      # Log-mel sits far from zero (silence is log(1e-6) = -13.8, the demo's mean is -9.3
      # with a spread of 2.4), so every patch token would share one large component.
      # Standardized per example, as audio transformers normalize their input.
      mean = x.mean(axis=(-2, -1), keepdims=True)
      x = (x - mean) / (x.std(axis=(-2, -1), keepdims=True) + 1e-5)
    out[m] = x
  if "text" in names:
    out["text_mask"] = batch["text_mask"]
  return out


def batch_tokens(batch: dict, patches: loader_lib.Patches) -> int:
  """Tokens of a batch (all processes): its patches, and its real text tokens."""
  n = loader_lib.patch_tokens({k: v.shape for k, v in batch.items()}, patches)
  if "text" in batch:
    n += int(batch["text_mask"].sum())
  return n * jax.process_count()
