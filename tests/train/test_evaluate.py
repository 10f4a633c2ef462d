"""Evaluation protocols on cases whose answer is known: multi-view video, the linear probe."""

import dataclasses
import types

import cv2
import jax
import numpy as np
import pytest

from impax.datasets import decode, records
from impax.model import Model, get_config, init_params
from impax.train import evaluate
from impax.train.config import Bucket, ConfigError, Task


def frames_features(width: int, height: int, count: int = 6) -> dict:
  """A stored video of `count` JPEG frames: a horizontal and a vertical gradient, each frame
  brighter than the last, so every clip start and crop position gives other pixels."""
  x = np.linspace(0, 150, width)[None, :, None]
  y = np.linspace(0, 80, height)[:, None, None]
  frames = []
  for t in range(count):
    image = np.broadcast_to(x + y + 4 * t, (height, width, 3)).astype(np.uint8)
    frames.append(cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
                  .tobytes())
  return {"video/frames": frames, "video/fps": [10.0], "video/height": [height],
          "video/width": [width]}


def test_spatial_crops_span_the_longer_side_and_keep_the_centre():
  # a 96x48 frame, a square output: the centre box is 48x48 at x=24
  centre = decode._crop_box(96, 48, 32, 32, None, None)
  assert centre == (24, 0, 72, 48)
  assert decode.spatial_crops(centre, 96, 48, 3) == [(0, 0, 48, 48), (24, 0, 72, 48),
                                                      (48, 0, 96, 48)]
  # taller than wide: along the height
  assert decode.spatial_crops((0, 24, 48, 72), 48, 96, 3)[2] == (0, 48, 48, 96)
  # a frame of the output's own aspect: the crops coincide, as in IMP's protocol
  assert set(decode.spatial_crops((0, 0, 48, 48), 48, 48, 3)) == {(0, 0, 48, 48)}
  assert decode.spatial_crops(centre, 96, 48, 1) == [centre]


def test_evaluation_views_are_clips_times_crops_clip_major():
  stored = records.Record(frames_features(96, 48)).video
  rng = np.random.default_rng(0)
  views, starts = decode.video(stored, 2, 32, 32, None, rng, clips=3, crops=3)
  assert views.shape == (9, 2, 32, 32, 3) and starts == [0.0, 0.2, 0.4]
  boxes = decode.spatial_crops(decode._crop_box(96, 48, 32, 32, None, rng), 96, 48, 3)
  for c, start in enumerate((0, 2, 4)):
    for k, box in enumerate(boxes):
      for t in range(2):
        expected = decode.decode_jpeg(stored.frames[start + t], box, 32, 32, False)
        np.testing.assert_array_equal(views[3 * c + k, t], expected)
  # the centre clip's centre crop is the single view
  single, _ = decode.video(stored, 2, 32, 32, None, rng)
  np.testing.assert_array_equal(views[4], single)
  assert len({views[k].tobytes() for k in range(9)}) == 9  # every view differs here


def test_each_view_is_embedded_as_if_alone_and_averaging_is_their_mean():
  # Dense: with expert-choice MoE layers a token's experts depend on the other tokens of its
  # routing group, so no example is embedded exactly as if alone (as in IMP).
  cfg = get_config("tiny", moe_layers=())
  params = init_params(cfg, jax.random.key(0))
  model = Model(cfg)
  task = Task("video_text", "unused", "contrastive", ("video", "text"),
              buckets=(Bucket(video=(2, 16, 16)),), eval_clips=2, eval_crops=3, text_length=8)
  rng = np.random.default_rng(1)
  batch = {"video": rng.integers(0, 256, (4, 6, 2, 16, 16, 3), dtype=np.uint8),
           "text": rng.integers(1, 100, (4, 8)).astype(np.int32),
           "text_mask": np.ones((4, 8), np.int32)}
  fwd = evaluate._forward(model, task, task.modalities)
  together = np.asarray(fwd(params, batch)["video"])
  assert together.shape[:2] == (4, 6)
  for v in range(6):
    alone = np.asarray(fwd(params, {**batch, "video": batch["video"][:, v]})["video"])
    np.testing.assert_allclose(together[:, v], alone[:, 0], rtol=1e-4, atol=1e-5)
  averaged = evaluate.average_views(together)
  np.testing.assert_allclose(averaged, together.mean(1), rtol=1e-6)
  assert evaluate.views_of(task) == 6
  assert evaluate.views_of(Task("a", "unused", "classification", ("spectrogram",),
                                buckets=(Bucket(audio_seconds=1.0),), eval_clips=4)) == 1


def clustered(rng, labels, spread):
  """Features of 16 dimensions: class k near 3 * e_k, Gaussian noise of `spread` around it."""
  centres = 3 * np.eye(16)[labels]
  return centres + spread * rng.standard_normal(centres.shape)


def test_a_probe_on_features_that_separate_the_classes_is_exact():
  rng = np.random.default_rng(0)
  y = {s: np.tile(np.arange(10), n) for s, n in (("train", 20), ("val", 5), ("test", 5))}
  x = {s: clustered(rng, y[s], 0.1) for s in y}
  out = evaluate.linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"])
  assert out["top1"] == 1.0 and out["validation_top1"] == 1.0
  # ties on validation keep the strongest regularisation that reaches them
  assert out["C"] == evaluate.PROBE_C[0]


def test_a_probe_on_features_unrelated_to_the_labels_stays_near_chance():
  rng = np.random.default_rng(1)
  y = {s: np.tile(np.arange(10), n) for s, n in (("train", 30), ("val", 20), ("test", 20))}
  x = {s: rng.standard_normal((len(y[s]), 16)) for s in y}
  out = evaluate.linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"])
  assert out["top1"] < 0.25  # chance is 0.1; 200 test examples


def test_the_probe_chooses_its_regularisation_on_validation_not_test():
  rng = np.random.default_rng(2)
  y = {s: np.tile(np.arange(10), n) for s, n in (("train", 3), ("val", 10), ("test", 10))}
  x = {s: clustered(rng, y[s], 1.5) for s in y}
  out = evaluate.linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"])
  # the test figure is the chosen C's, whichever C would have scored best on test
  alone = evaluate.linear_probe(x["train"], y["train"], x["val"], y["val"])
  assert alone["C"] == out["C"] and alone["top1"] == out["validation_top1"]
  assert 0.3 < out["top1"] <= 1.0


def test_keep_best_names_a_figure_the_evaluation_has():
  results = {"video_text": {"examples": 8, "split": "validation", "zero_shot_top1": 0.5}}
  assert evaluate.metric(results, "video_text/zero_shot_top1") == 0.5
  with pytest.raises(ConfigError, match="it has video_text/zero_shot_top1"):
    evaluate.metric(results, "video_text/accuracy")
  with pytest.raises(ConfigError, match="checkpoint must be one of"):
    evaluate.checkpoint_dir("/tmp/run", "first")


def test_a_prompt_ensemble_is_the_mean_of_each_templates_normalised_embedding(tmp_path):
  import sentencepiece as spm
  words = ["a video of seven.", "a video of two.", "the digit seven.", "the digit two."] * 20
  spm.SentencePieceTrainer.train(sentence_iterator=iter(words), model_prefix=str(tmp_path / "t"),
                                 vocab_size=10, model_type="word", minloglevel=2)
  dataset = types.SimpleNamespace(tokenizer_path=str(tmp_path / "t.model"),
                                  labels=("seven", "two"))
  cfg = get_config("tiny", moe_layers=())  # dense: no row's routing depends on the others
  model, params = Model(cfg), init_params(cfg, jax.random.key(0))

  def embed(*templates):
    return evaluate.class_text_embeddings(model, params, dataset, templates, 8, None)

  one, other = embed("a video of {label}."), embed("the digit {label}.")
  both = embed("a video of {label}.", "the digit {label}.")
  assert both.shape == one.shape == (2, cfg.embed_dim)
  expected = (evaluate._normalize(one) + evaluate._normalize(other)) / 2
  np.testing.assert_allclose(both, expected, rtol=1e-4, atol=1e-6)
  assert not np.allclose(evaluate._normalize(both), evaluate._normalize(one), atol=1e-3)

  # Which templates a task's zero-shot uses: its ensemble, else its prompt, else the registry's.
  task = Task("video_text", "unused", "contrastive", ("video", "text"),
              buckets=(Bucket(video=(2, 16, 16)),))
  assert evaluate.zero_shot_templates(task, "video") == ("a video of {label}.",)
  assert evaluate.zero_shot_templates(
      dataclasses.replace(task, prompt="clip of {label}."), "video") == ("clip of {label}.",)
  ensemble = dataclasses.replace(task, zero_shot_prompts=("x {label}.", "y {label}."))
  assert evaluate.zero_shot_templates(ensemble, "video") == ("x {label}.", "y {label}.")
