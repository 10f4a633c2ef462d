"""Losses and evaluation metrics on crafted inputs, against values worked out by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from impax.train import evaluate, inputs, objectives, schedule


def test_infonce_is_small_for_aligned_pairs_and_log_n_for_identical_ones():
  a = jnp.eye(4, 8) * 3.0
  loss, stats = objectives.infonce(a, a * 2, jnp.float32(0.05), jnp.ones(4, bool))
  assert float(loss) < 1e-6 and float(stats["accuracy"]) == 1.0
  same = jnp.ones((4, 8))  # every pair equally similar: uniform over 4 candidates
  loss, _ = objectives.infonce(same, same, jnp.float32(0.1), jnp.ones(4, bool))
  assert float(loss) == pytest.approx(math.log(4), rel=1e-5)


def test_infonce_matches_a_hand_computed_value_and_is_symmetric():
  a = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  b = jnp.array([[1.0, 0.0], [1.0, 1.0]]) / jnp.array([[1.0], [math.sqrt(2)]])
  t = 0.5
  sim = np.array([[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]) / t
  def ce(m):
    return -np.mean([m[i, i] - np.log(np.exp(m[i]).sum()) for i in range(2)])
  expected = 0.5 * (ce(sim) + ce(sim.T))
  loss, _ = objectives.infonce(a, b, jnp.float32(t), jnp.ones(2, bool))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  swapped, _ = objectives.infonce(b, a, jnp.float32(t), jnp.ones(2, bool))
  assert float(swapped) == pytest.approx(expected, rel=1e-5)


def test_invalid_rows_are_neither_anchors_nor_negatives():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  valid = np.array([1, 1, 0, 1, 0, 1], bool)
  full, _ = objectives.infonce(jnp.asarray(a), jnp.asarray(b), jnp.float32(0.2), jnp.asarray(valid))
  sub, _ = objectives.infonce(jnp.asarray(a[valid]), jnp.asarray(b[valid]), jnp.float32(0.2),
                              jnp.ones(valid.sum(), bool))
  assert float(full) == pytest.approx(float(sub), rel=1e-5)


def test_softmax_cross_entropy_and_accuracy():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0], [9.0, 9.0, 9.0]])
  labels = jnp.array([0, 1, 2])
  valid = jnp.array([True, True, False])
  loss, stats = objectives.softmax_cross_entropy(logits, labels, valid)
  expected = np.mean([-(2 - np.log(np.exp(2) + 2)), -(0 - np.log(2 + np.exp(5)))])
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(stats["accuracy"]) == 0.5


def test_sigmoid_cross_entropy_for_multi_label():
  logits = jnp.array([[0.0, 3.0, -3.0]])
  targets = jnp.array([[0.0, 1.0, 1.0]])
  loss, stats = objectives.sigmoid_cross_entropy(logits, targets, jnp.array([True]))
  sig = lambda x: 1 / (1 + np.exp(-x))
  expected = -np.mean([np.log(1 - sig(0.0)), np.log(sig(3.0)), np.log(sig(-3.0))])
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(stats["accuracy"]) == 1.0  # the top class (1) is one of the labels


def test_recall_and_zero_shot_on_crafted_embeddings():
  similarity = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.1, 0.2, 0.3]])
  # row 0 finds 0 first; row 1 finds 1 second; row 2 finds 2 first
  assert evaluate.recall_at(similarity, ks=(1, 2)) == {"R@1": 2 / 3, "R@2": 1.0}
  classes = np.eye(3)
  examples = np.array([[1.0, 0.1, 0], [0, 0, 2.0], [0.2, 1.0, 0], [0, 0.9, 1.0]])
  assert evaluate.zero_shot_accuracy(examples, classes, np.array([0, 2, 1, 1])) == 0.75


def test_interval_schedule_follows_imp_and_random_follows_weights():
  # IMP's intervals: a task with interval k runs in every k-th cycle of the fixed order.
  order = [schedule.task_of(s, "intervals", (1, 2, 4), (1, 1, 1), 0) for s in range(7)]
  assert order == [0, 1, 2, 0, 0, 1, 0]
  assert schedule.shares("intervals", (1, 2, 4), ()) == [4 / 7, 2 / 7, 1 / 7]
  drawn = [schedule.task_of(s, "random", (1, 1, 1), (2.0, 1.0, 1.0), 5) for s in range(8000)]
  counts = np.bincount(drawn) / len(drawn)
  np.testing.assert_allclose(counts, [0.5, 0.25, 0.25], atol=0.02)
  # a pure function of the step: the same wherever a run resumes
  assert [schedule.task_of(s, "random", (1,) * 3, (2.0, 1.0, 1.0), 5) for s in (7000, 3)] == \
      [drawn[7000], drawn[3]]


def test_model_inputs_scale_pixels_and_standardize_each_spectrogram():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  # Two log-mel examples far from zero, at different levels and spreads.
  spectrogram = np.stack([rng.normal(-9.0, 2.5, (16, 8)), rng.normal(-3.0, 0.5, (16, 8))])
  out = inputs.model_inputs({"image": pixels, "spectrogram": spectrogram.astype(np.float32)},
                             ("image", "spectrogram"))
  np.testing.assert_allclose(out["image"], pixels / 127.5 - 1.0, atol=1e-6)
  x = np.asarray(out["spectrogram"])
  np.testing.assert_allclose(x.mean(axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(x.std(axis=(1, 2)), 1.0, atol=1e-4)
  # An affine change of one example's level and scale leaves its input the same.
  shifted = inputs.model_inputs({"spectrogram": spectrogram[:1] * 3.0 + 4.0}, ("spectrogram",))
  np.testing.assert_allclose(shifted["spectrogram"], x[:1], atol=1e-4)
