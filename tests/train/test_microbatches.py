"""microbatches=k: a task's batch in k parts, gradients accumulated. For a dense model the
step's loss and updated parameters are the whole batch's, classification and contrastive
(whose loss still sees every negative of the batch); an MoE routes each part in routing
groups of its own, which equals the whole batch's routing when a group is one example."""

import dataclasses

import jax
import numpy as np
import pytest

from impax.datasets.loader import Bucket
from impax.model import Model
from impax.train import step as step_lib
from impax.train.config import ConfigError, Task, TrainConfig

CONTRASTIVE = Task("video_text", "unused", "contrastive", ("video", "text"),
                   buckets=(Bucket(video=(2, 16, 16)),), text_length=8)
CLASSIFICATION = Task("audio_classification", "unused", "classification", ("spectrogram",),
                      buckets=(Bucket(audio_seconds=0.32),))
DENSE = (("moe_layers", ()), ("num_experts", 0))


def batch_for(task, size, seed=0):
  rng = np.random.default_rng(seed)
  batch = {"valid": np.ones(size, bool)}
  if "video" in task.modalities:
    batch["video"] = rng.integers(0, 256, (size, 2, 16, 16, 3), np.uint8)
  if "spectrogram" in task.modalities:
    batch["spectrogram"] = rng.normal(size=(size, 32, 128)).astype(np.float32)
    batch["label"] = rng.integers(0, 5, size).astype(np.int32)
  if "text" in task.modalities:
    batch["text"] = rng.integers(1, 300, (size, 8)).astype(np.int32)
    batch["text_mask"] = np.ones((size, 8), np.int32)
  batch["valid"][-1] = False  # an undecodable record: neither anchor nor negative
  return batch


def setup(task, overrides):
  config = TrainConfig(tasks=(task,), model="tiny", model_overrides=overrides,
                       warmup_steps=1, learning_rate=1e-2)
  model_cfg = step_lib.model_config(config, {"audio_classification": 5})
  model, tx = Model(model_cfg, mesh=None), step_lib.make_optimizer(config)
  return config, model, tx, step_lib.init_state(config, model_cfg, tx, None)


def one_step(task, overrides, microbatches, size=8):
  """(loss and stats, gradients) of one step's batch, in `microbatches` parts."""
  _, model, _, state = setup(task, overrides)
  batch, rng = batch_for(task, size), jax.random.key(3)
  if microbatches == 1:
    fn = jax.value_and_grad(lambda p: step_lib.task_loss(model, p, batch, task, rng, True),
                            has_aux=True)
    (total, stats), grads = jax.jit(fn)(state["params"])
  else:
    total, stats, grads = jax.jit(lambda p: step_lib.microbatched_grads(
        model, p, batch, task, rng, microbatches))(state["params"])
  return jax.device_get(({**stats, "total": total}, grads))


def assert_same_step(a, b, rtol=1e-4, atol=1e-7):
  (stats_a, grads_a), (stats_b, grads_b) = a, b
  for key in ("total", "loss", "accuracy", "aux_loss"):
    np.testing.assert_allclose(stats_a[key], stats_b[key], rtol=rtol, atol=atol, err_msg=key)
  scale = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(grads_b))
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(grads_a),
                          jax.tree_util.tree_leaves(grads_b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * scale * 1e3,
                               err_msg=jax.tree_util.keystr(path))


def test_the_trainers_step_takes_microbatches():
  config, model, tx, state = setup(CONTRASTIVE, DENSE)
  batch = batch_for(CONTRASTIVE, 8)
  out = {}
  for k in (1, 2):
    fn = step_lib.make_step(model, (CONTRASTIVE,), tx, config.seed, microbatches=k)
    new, stats, _, finite = jax.jit(fn)(state, (batch,), np.int32(3))
    assert bool(finite)
    out[k] = jax.device_get((new["params"], stats[CONTRASTIVE.name]["loss"]))
  np.testing.assert_allclose(out[2][1], out[1][1], rtol=1e-5)
  for x, y in zip(jax.tree_util.tree_leaves(out[2][0]), jax.tree_util.tree_leaves(out[1][0])):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("task", [CONTRASTIVE, CLASSIFICATION], ids=lambda t: t.objective)
def test_a_dense_models_step_in_parts_is_the_whole_batchs(task):
  whole = one_step(task, DENSE, 1)
  for k in (2, 4):
    assert_same_step(one_step(task, DENSE, k), whole)


def test_an_moe_step_in_parts_is_the_whole_batchs_when_a_routing_group_is_one_example():
  # Expert choice picks tokens within a routing group: a group of one example's tokens
  # (a 2x16x16 video is 4 tubelets of 2x8x8; 8 text tokens) sees the same tokens whether
  # the batch is split or not.
  per_example = dataclasses.replace(CONTRASTIVE, modalities=("video", "text"))
  for group in (4,):
    overrides = (("group_size", group),)
    assert_same_step(one_step(per_example, overrides, 2), one_step(per_example, overrides, 1))
  # Groups of several examples: a part's groups hold other examples than the whole batch's,
  # so the routing (and the step) differ; the loss over the batch stays that of the same
  # embeddings' kind, and finite.
  overrides = (("group_size", 64),)
  split, whole = (one_step(CONTRASTIVE, overrides, k, size=16) for k in (2, 1))
  assert np.isfinite(split[0]["loss"]) and abs(split[0]["loss"] - whole[0]["loss"]) < 0.5
  with pytest.raises(AssertionError):
    assert_same_step(split, whole)


def test_a_batch_that_does_not_split_is_refused():
  with pytest.raises(ConfigError, match="a batch of 6 does not split into microbatches=4"):
    one_step(CONTRASTIVE, DENSE, 4, size=6)
  with pytest.raises(ConfigError, match="microbatches must be at least 1"):
    from impax.train import config as config_lib
    config_lib.check(TrainConfig(tasks=(CONTRASTIVE,), microbatches=0))
