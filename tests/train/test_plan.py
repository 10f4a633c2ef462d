"""`impax plan`: the mixture of a config, counted before training, against counts by hand."""

import dataclasses
import json
import os

import pytest

from impax.cli import main as cli
from impax.datasets import prepared
from impax.datasets.loader import Bucket
from impax.train import plan as plan_lib
from impax.train import setup
from impax.train.config import ConfigError, Task, TrainConfig

CONFIG_FILE = '''
from impax.datasets.loader import Bucket
from impax.train.config import Task, TrainConfig

def get_config(data):
  return TrainConfig(tasks=(
      Task("video_text", data + "/videos", "contrastive", ("video", "text"),
           buckets=(Bucket(video=(2, 16, 16)),), token_budget=96, text_length=8),
      Task("audio_classification", data + "/audio", "classification", ("spectrogram",),
           buckets=(Bucket(audio_seconds=0.32),), token_budget=512, interval=2)),
      steps=10)
'''


@pytest.fixture(scope="module")
def config_file(demo_data, tmp_path_factory):
  path = tmp_path_factory.mktemp("plan") / "config.py"
  path.write_text(CONFIG_FILE)
  return f"{path}:{os.path.dirname(demo_data['videos'])}"


def load(config_file, **changes) -> TrainConfig:
  from impax.train import config as config_lib
  return dataclasses.replace(config_lib.load(config_file), **changes)


def test_counts_match_a_schedule_counted_by_hand(config_file, demo_data):
  plan = plan_lib.for_config(load(config_file))
  video, audio = plan.tasks
  # Intervals 1 and 2: cycles take (video, audio), (video), ...: a period of 3 steps, 2 of
  # them video's. 10 steps: three periods and one step more.
  assert (video.steps, audio.steps) == (7, 3)
  assert (video.share, audio.share) == (0.7, 0.3)
  # A 2x16x16 video is 4 tubelets of 2x8x8, and 8 text tokens: 96 tokens a batch is 8
  # videos. 0.32 s of audio is 32x128 log-mel, 64 patches of 8x8: 512 tokens is 8 clips.
  assert video.batch_sizes == (8,) and audio.batch_sizes == (8,)
  assert (video.tokens, audio.tokens) == (7 * 8 * 12, 3 * 8 * 64)
  assert plan.tokens == 7 * 8 * 12 + 3 * 8 * 64
  assert plan.token_share(audio) == pytest.approx(1536 / 2208)
  videos = prepared.open_dataset(demo_data["videos"]).num_records("train")
  sounds = prepared.open_dataset(demo_data["audio"]).num_records("train")
  assert (video.examples, audio.examples) == (videos, sounds)
  assert video.epochs == pytest.approx(56 / videos) and audio.epochs == pytest.approx(24 / sounds)
  assert plan.to_json()["tasks"]["video_text"]["steps"] == 7


def test_bucket_draws_are_the_loaders(config_file):
  config = load(config_file)
  two = dataclasses.replace(config.tasks[0], buckets=(
      Bucket(video=(2, 16, 16)), Bucket(video=(4, 16, 16), weight=3.0)))
  config = dataclasses.replace(config, tasks=(two, config.tasks[1]), steps=500)
  loaders = setup.setup(config, mesh=False).loaders  # as for_config opens them
  video = plan_lib.make(config, loaders).tasks[0]
  data = loaders["video_text"]
  # 166 periods of (video, audio, video), then (video, audio): 333 video steps
  assert video.steps == 333 and sum(video.bucket_steps) == 333
  assert video.bucket_steps == tuple(
      sum(data.bucket_of(k) == b for k in range(333)) for b in range(2))
  assert 0.7 < video.bucket_steps[1] / 333 < 0.8  # weight 3 of 4
  assert video.examples_seen == data.sampler.stream_start(333)  # what the loader will read


def test_warnings_name_too_few_and_too_many_epochs(config_file):
  few = plan_lib.for_config(load(config_file, steps=1)).warnings()  # video's step only
  assert any(w.startswith("audio_classification sees 0.00 of an epoch of its") for w in few), few
  assert any(w.startswith("video_text sees 0.") and w.endswith("raise steps or its share")
             for w in few), few
  many = plan_lib.for_config(load(config_file, steps=2000)).warnings()
  assert any(w.startswith("audio_classification repeats its") and "more than 50" in w
             for w in many), many


def test_solves_intervals_and_weights_for_target_shares(config_file):
  config = load(config_file)
  plan = plan_lib.for_config(config)
  targets = {"video_text": 0.8, "audio_classification": 0.2}
  assert plan_lib.solve(plan, config, targets, "steps") == {"video_text": 1,
                                                             "audio_classification": 4}
  # Of tokens: audio takes 512 a step, video 96; equal token shares need about 5.3 video
  # steps per audio step.
  half = {"video_text": 0.5, "audio_classification": 0.5}
  solved = plan_lib.solve(plan, config, half, "tokens")
  long_run = plan_lib.for_config(plan_lib.with_solution(dataclasses.replace(config, steps=4800),
                                                        solved))
  for t in long_run.tasks:
    assert long_run.token_share(t) == pytest.approx(0.5, abs=0.01), solved
  weights = plan_lib.solve(plan, dataclasses.replace(config, schedule="random"), half, "tokens")
  assert weights["video_text"] == 1.0
  assert weights["audio_classification"] == pytest.approx(96 / 512, rel=1e-5)
  with pytest.raises(ConfigError, match="names no share for audio_classification"):
    plan_lib.parse_targets("video_text=1", config)
  with pytest.raises(ConfigError, match="sum to 0.900, not 1"):
    plan_lib.parse_targets("video_text=0.5,audio_classification=0.4", config)


def test_the_command_prints_the_plan_and_a_solution(config_file, capsys):
  assert cli(["plan", config_file]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "10 steps, mode agd, schedule intervals, 2,208 tokens in all"
  assert out[1].split() == ["task", "examples", "batch", "per", "bucket", "steps", "share",
                            "epochs", "tokens/step", "tokens", "token", "share"]
  assert out[2].split()[0] == "video_text" and out[2].split()[2:5] == ["8", "7", "70.0%"]
  assert cli(["plan", config_file, "--target-share", "video_text=0.8,audio_classification=0.2",
              "--json"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["solved"]["values"] == {"video_text": 1, "audio_classification": 4}
  assert result["tasks"]["audio_classification"]["steps"] == 2  # 10 steps of period 5
  assert cli(["plan", config_file, "--target-share", "video_text=1"]) == 2
  assert "names no share for audio_classification" in capsys.readouterr().err
  # A task's field set by its name: twice the token budget, twice the batch.
  assert cli(["plan", config_file, "--set", "tasks.video_text.token_budget=192", "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["tasks"]["video_text"]["batch_sizes"] == [16]
