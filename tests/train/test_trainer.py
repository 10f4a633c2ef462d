"""The AGD trainer end to end on real shards: learning, compilation, resume, SIGTERM, devices."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from impax.datasets.loader import Bucket
from impax.pipelines import build
from impax.train import config as config_lib
from impax.train import inputs, metrics, setup, trainer
from impax.train import plan as plan_lib
from impax.train import step as step_lib
from impax.train.config import ConfigError, Task, TrainConfig


CONFIG_FILE = '''
from impax.datasets.loader import Bucket
from impax.train.config import Task, TrainConfig

def get_config(data):
  videos, audio = data + "/videos", data + "/audio"
  return TrainConfig(
      tasks=(Task("video_text", videos, "contrastive", ("video", "text"),
                  buckets=(Bucket(video=(2, 16, 16)), Bucket(video=(4, 16, 16))),
                  token_budget=288, text_length=8, eval_clips=2),
             Task("audio_classification", audio, "classification", ("spectrogram",),
                  buckets=(Bucket(audio_seconds=0.32),), token_budget=512, interval=2)),
      model="tiny", steps=STEPS, warmup_steps=2, learning_rate=2e-3, log_every=1,
      checkpoint_every=4, plots=False)
'''


def make_config(data_root, steps=12, **changes) -> TrainConfig:
  namespace = {}
  exec(CONFIG_FILE.replace("STEPS", str(steps)), namespace)
  config = namespace["get_config"](data_root)
  return config_lib.apply_overrides(config, [f"{k}={v}" for k, v in changes.items()])


@pytest.fixture(scope="module")
def root(demo_data):
  return os.path.dirname(demo_data["videos"])


def losses(workdir):
  return {(r["step"], r["task"]): r["loss"] for r in metrics.read(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in r}


@pytest.fixture(scope="module")
def learned(root, tmp_path_factory):
  """A 40-step run of the config: the learning test's, and the run that the resumed and the
  SIGTERM-stopped runs of the same config must reproduce."""
  config = make_config(root, steps=40, plots=True, log_batch_ids=True)
  workdir = tmp_path_factory.mktemp("learned")
  logged = []
  summary = trainer.train(config, str(workdir), log=logged.append)
  return config, workdir, summary, logged


def test_training_learns_compiles_each_shape_once_and_evaluates(learned):
  config, tmp_path, summary, logged = learned
  assert summary["status"] == "finished" and summary["step"] == 40
  # each bucket's batch from its token budget, rounded to batch_multiple (8), and logged
  assert "video_text batches: 24 of video 2x16x16, 16 of video 4x16x16" in logged
  # one compilation per (task, declared shape), all before the first step
  assert summary["compilations"] == {"video_text 24x2x16x16x3": 1, "video_text 16x4x16x16x3": 1,
                                     "audio_classification 8x32x128": 1}
  assert summary["compilations_after_warmup"] == 0 and summary["xla_compilations_in_loop"] == 0
  rows = [r for r in metrics.read(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  # the interval schedule: audio every second cycle
  assert sum(r["task"] == "audio_classification" for r in rows) == 13
  # as the plan, logged at start and in summary.json, counted before the first step
  assert summary["plan"]["tasks"]["audio_classification"]["steps"] == 13
  assert summary["plan"]["tasks"]["video_text"]["steps"] == 27
  assert any(line.startswith("40 steps, mode agd, schedule intervals, ") for line in logged)
  curve = [r["loss"] for r in rows if r["task"] == "video_text"]
  assert np.mean(curve[-4:]) < np.mean(curve[:4]) - 0.1, curve  # it learns
  # 13 steps of audio from a zero-initialized head move its loss too little to assert on
  assert all(np.isfinite(r["loss"]) for r in rows)
  first = next(r for r in rows if r["task"] == "video_text")
  assert first["tokens_per_second"] > 0 and len(first["experts/video/layer_2/fraction"]) == 4
  assert set(os.listdir(tmp_path / "plots")) == {"loss.png", "accuracy.png", "diagnostics.png"}
  assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))
  result = json.loads((tmp_path / "eval.json").read_text())["results"]
  assert {"video_to_text/R@1", "text_to_video/R@10", "zero_shot_top1"} <= set(result["video_text"])
  assert 0 <= result["audio_classification"]["accuracy"] <= 1
  assert result["video_text"]["examples"] == 8  # every held-out video, once


def test_each_logged_step_says_why_the_run_goes_where_it_goes(learned):
  """Issue 31's diagnostics, per task in metrics.jsonl (log_every=1: each row one step)."""
  config, tmp_path, summary, logged = learned
  rows = [r for r in metrics.read(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  schedule = step_lib.learning_rate(config)
  for i, row in enumerate(rows):  # no step was skipped: the optimizer's count is the step's
    assert row["grad_norm"] > 0 and row["param_norm"] > 0
    assert (row["update_norm"] > 0) == (row["learning_rate"] > 0)  # warmup starts at 0
    assert row["clipped"] == float(row["grad_norm"] > config.grad_clip)
    assert row["learning_rate"] == pytest.approx(float(schedule(row["step"] - 1)), rel=1e-4)
    for modality in ("video", "text") if row["task"] == "video_text" else ("spectrogram",):
      for layer in ("layer_2", "layer_3"):  # the tiny preset's MoE layers
        key = f"experts/{modality}/{layer}"
        assert np.isfinite(row[f"{key}/z_loss"]) and row[f"{key}/z_loss"] > 0
        assert row[f"{key}/load_balance_loss"] >= 0
        assert 0 <= row[f"{key}/dropped"] <= 1 and sum(row[f"{key}/fraction"]) == pytest.approx(1)
  assert all(0 < r["temperature"] < 1 for r in rows if r["task"] == "video_text")
  assert rows[0]["learning_rate"] == 0.0
  assert rows[2]["learning_rate"] == pytest.approx(config.learning_rate)  # warmup_steps=2
  # TensorBoard: every number, an expert's load as one scalar per expert
  tags = dict(metrics._flat(rows[0]))
  assert {f"{rows[0]['task']}/{k}" for k in ("grad_norm", "clipped", "learning_rate")} <= set(tags)
  assert f"{rows[0]['task']}/experts/video/layer_2/fraction/3" in tags


def test_the_plan_printed_before_training_is_the_one_the_run_took(learned):
  """`impax plan` opens the trainer's loaders (setup.py): it counts what the run takes."""
  config, _, summary, _ = learned
  assert plan_lib.for_config(config).to_json() == summary["plan"]


def test_batches_jsonl_names_the_examples_of_every_step(learned):
  """log_batch_ids: WORKDIR/batches.jsonl holds, for each step, the ids of the examples the
  step trained on, which are those the task's loader gives at its step."""
  config, workdir, _, _ = learned
  rows = [json.loads(line) for line in (workdir / "batches.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 41))  # as metrics.jsonl counts steps
  loaders = setup.setup(config, mesh=False).loaders  # the trainer's, on one device
  iterators = {name: iter(data) for name, data in loaders.items()}
  for row in rows:
    batch = next(iterators[row["task"]])
    assert row["ids"] == batch["id"][batch["valid"]].tolist() and row["ids"], row["step"]
    assert row["shape"] == step_lib.shape_text(step_lib.shapes_of(batch))
  assert {r["task"] for r in rows} == {"video_text", "audio_classification"}


def test_a_resumed_run_continues_exactly(learned, tmp_path, monkeypatch):
  config, whole_dir, _, _ = learned
  monkeypatch.chdir(tmp_path)  # workdirs relative to the current folder, as users give them
  stopped = trainer.train(config, "parts", log=lambda *_: None, stop_at=21)
  assert stopped["step"] == 21 and "eval" not in stopped
  resumed = trainer.train(config, "parts", log=lambda *_: None)
  assert resumed["step"] == 40
  whole, parts = losses(whole_dir), losses(tmp_path / "parts")
  assert whole.keys() == parts.keys() and len(whole) == 40
  # the resumed run drops the ids logged past its checkpoint: the file reads as one run's
  assert (tmp_path / "parts" / "batches.jsonl").read_text() == (
      whole_dir / "batches.jsonl").read_text()
  for key in whole:
    assert parts[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
  a = json.loads((whole_dir / "eval.json").read_text())["results"]
  b = json.loads((tmp_path / "parts" / "eval.json").read_text())["results"]
  assert a["audio_classification"]["accuracy"] == b["audio_classification"]["accuracy"]


def test_mixed_batch_mode_takes_every_task_each_step(root, tmp_path):
  config = make_config(root, steps=3, mode="mixed", eval_at_end=False)
  # One bucket a task: mixed mode compiles every combination of the tasks' shapes.
  config = dataclasses.replace(config, tasks=tuple(
      dataclasses.replace(t, buckets=t.buckets[:1]) for t in config.tasks))
  # An exclusion list (as `impax dedup` writes for leaks) keeps two videos out of video_text.
  excluded = tmp_path / "leaked-ids.txt"
  excluded.write_text("video-train-00000\nvideo-train-00003\n")
  video_text = dataclasses.replace(config.tasks[0], exclude=str(excluded))
  # Video-audio reads the videos with a sound track only; the silent ones are left out, not failed.
  config = dataclasses.replace(config, tasks=(video_text, *config.tasks[1:]) + (
      Task("video_audio", config.tasks[0].dataset, "contrastive", ("video", "spectrogram"),
           buckets=(Bucket(video=(2, 16, 16), audio_seconds=0.32),), token_budget=256),))
  logged = []
  summary = trainer.train(config, str(tmp_path), log=logged.append)
  assert summary["status"] == "finished"
  rows = [r for r in metrics.read(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert sorted((r["step"], r["task"]) for r in rows) == [
      (s, t) for s in (1, 2, 3) for t in ("audio_classification", "video_audio", "video_text")]
  assert summary["xla_compilations_in_loop"] == 0
  meta = json.loads(open(os.path.join(root, "videos", "metadata.json")).read())
  silent = len(meta["splits"]["train"]["lacking"]["audio"])
  assert summary["records_left_out"] == {"video_audio": {"audio": silent}}
  assert summary["failed_records"]["video_audio"] == 0
  assert summary["records_excluded"] == {"video_text": 2, "audio_classification": 0,
                                         "video_audio": 0}
  assert any(line.startswith("video_text skips 2 records") for line in logged)
  assert any(line.startswith("video_audio reads") and f"{silent} without audio" in line
             for line in logged)


def test_bad_tasks_are_refused_before_training(root, tmp_path):
  base = make_config(root)
  missing = Task("image_text", base.tasks[1].dataset, "contrastive", ("image", "text"),
                 buckets=(Bucket(image=(16, 16)),))
  with pytest.raises(ConfigError, match="task 'image_text'.*reads image but split 'train'"):
    trainer.train(TrainConfig(tasks=(missing,)), str(tmp_path), log=lambda *_: None)
  small = Task("video_text", base.tasks[0].dataset, "contrastive", ("video", "text"),
               buckets=(Bucket(video=(1, 16, 16)),))
  with pytest.raises(ConfigError, match="task 'video_text' bucket 0: video .* tubelet"):
    trainer.train(TrainConfig(tasks=(small,)), str(tmp_path), log=lambda *_: None)
  # Images tokenized by their own tokenizer next to videos tokenized by the shared one.
  images = str(tmp_path / "images")
  plan = build.prepare("jsonl", os.path.join(root, "raw", "images-train.jsonl"), images,
                       "train", ({"image_short_side": 48},))
  build.run(plan, workers=1)
  own = Task("image_text", images, "contrastive", ("image", "text"),
             buckets=(Bucket(image=(16, 16)),))
  with pytest.raises(ConfigError, match=r"different tokenizers \('video_text' .*; 'image_text' "
                                        r".*--tokenizer PATH"):
    trainer.train(TrainConfig(tasks=(base.tasks[0], own)), str(tmp_path), log=lambda *_: None)
  # The videos' sound tracks and captions, but the dataset serves no audio-text task
  # (metadata.json lists what its data serves): refused before anything is read.
  unserved = Task("audio_text", base.tasks[0].dataset, "contrastive", ("waveform", "text"),
                  buckets=(Bucket(audio_seconds=0.32, batch_size=4),))
  with pytest.raises(ConfigError, match=r"task 'audio_text': .*videos serves no contrastive task "
                                        r"of audio\+text; its data serves .*video_text \(video"
                                        r"\+text, contrastive\)"):
    trainer.train(TrainConfig(tasks=(unserved,)), str(tmp_path), log=lambda *_: None)
  with pytest.raises(ConfigError, match="takes 2 distinct modalities"):
    config_lib.check(TrainConfig(tasks=(Task("x", ".", "contrastive", ("video",),
                                             buckets=(Bucket(video=(4, 16, 16)),)),)))
  with pytest.raises(ConfigError, match="--set 'steps=many'"):
    config_lib.apply_overrides(base, ["steps=many"])
  # Periodic validation: refused before the first step, not at the first evaluation.
  with pytest.raises(ConfigError, match="evaluates split 'validation', which no task's dataset "
                                        "has: build it, or set validation_split"):
    trainer.train(dataclasses.replace(base, eval_every=4), str(tmp_path), log=lambda *_: None)
  with pytest.raises(ConfigError, match="keep_best 'video_text/zero_shot_top1' chooses among the "
                                        "periodic evaluations: set eval_every too"):
    config_lib.check(dataclasses.replace(base, keep_best="video_text/zero_shot_top1"))
  with pytest.raises(ConfigError, match="keep_best 'zero_shot_top1': expected TASK/METRIC"):
    config_lib.check(dataclasses.replace(base, keep_best="zero_shot_top1", eval_every=4))


def write_config(tmp_path, steps):
  path = tmp_path / "config.py"
  path.write_text(CONFIG_FILE.replace("STEPS", str(steps)))
  return str(path)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(root, learned, tmp_path):
  # The learning test's steps: its compiled programs (cached for the session) serve both runs.
  config = write_config(tmp_path, steps=40)
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "impax.cli", "train", f"{config}:{root}", "--workdir",
             str(workdir), "--set", "checkpoint_every=1000", "--set", "eval_at_end=false"]
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 240
  metrics_path = workdir / "metrics.jsonl"
  while time.monotonic() < deadline:
    if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= 6:
      break
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 3, output
  assert "stopped by SIGTERM" in output
  saved = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
  assert len(saved) == 1 and 0 < saved[0] < 40  # saved where it stopped, not at a cadence
  resumed = subprocess.run(command, capture_output=True, text=True, timeout=240)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"resumed from step {saved[0]}" in resumed.stdout
  steps = sorted({r["step"] for r in metrics.read(str(metrics_path)) if "loss" in r})
  assert steps == list(range(1, 41))  # no step lost, none twice
  # and the steps are those of the run that was never stopped
  whole, parts = losses(learned[1]), losses(workdir)
  assert whole.keys() == parts.keys()
  for key in whole:
    assert parts[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key


EIGHT_DEVICES_CONFIG = '''
from impax.datasets.loader import Bucket
from impax.train.config import Task, TrainConfig

def get_config(data):
  # The budgets give 18 videos and 10 spectrograms a batch, rounded to the config's
  # batch_multiple (8): 16 and 8 on any number of devices (before batch_multiple, one
  # device took 18 and 10, eight 16 and 8). Routing groups depend on the global batch and
  # group_size alone: with groups of 32 tokens (a video, a caption, two 32-pixel images
  # or their two captions, half a spectrogram) each of eight devices holds whole groups.
  # With the preset's 64, the 16 images of 32 pixels would make 4 groups, which 8 devices
  # cannot hold whole: refused (once grouped per device, which changed the losses: issue 31).
  return TrainConfig(
      tasks=(Task("video_text", data + "/videos", "contrastive", ("video", "text"),
                  buckets=(Bucket(video=(4, 32, 32)),), token_budget=1008, text_length=24),
             Task("audio_classification", data + "/audio", "classification", ("spectrogram",),
                  buckets=(Bucket(audio_seconds=0.32),), token_budget=640),
             Task("image_text", data + "/images", "contrastive", ("image", "text"),
                  buckets=(Bucket(image=(32, 32), batch_size=16),), text_length=16)),
      model="tiny", model_overrides=(("group_size", 32),), steps=4, warmup_steps=1,
      learning_rate=1e-3, log_every=1, eval_at_end=False, plots=False)
'''


def run_devices(config, workdir, env, extra=()):
  """`impax train` of the devices config (its file names the data) in a process of its own."""
  return subprocess.Popen([sys.executable, "-m", "impax.cli", "train", str(config),
                           "--workdir", str(workdir), *extra], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture(scope="module")
def one_device(root, tmp_path_factory):
  """The devices config on one CPU device: what every other layout must reproduce."""
  folder = tmp_path_factory.mktemp("devices")
  (folder / "config.py").write_text(EIGHT_DEVICES_CONFIG)
  config = f"{folder / 'config.py'}:{root}"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = run_devices(config, folder / "one", env)
  output = proc.communicate(timeout=400)[0]
  assert proc.returncode == 0, output
  assert "parameters on 1 device(s)\n" in output
  return config, losses(folder / "one"), output


def test_eight_simulated_devices_train_like_one(one_device, tmp_path):
  config, one, one_output = one_device
  proc = run_devices(config, tmp_path / "eight",
                     dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  output = proc.communicate(timeout=400)[0]
  assert proc.returncode == 0, output
  assert "mesh {'data': 2, 'expert': 4}" in output
  # the same batches, whatever the devices: the config's, logged at start
  for out in (one_output, output):
    assert "video_text batches: 16 of video 4x32x32\n" in out
    assert "audio_classification batches: 8 of audio 0.32 s\n" in out
  eight = losses(tmp_path / "eight")
  assert len(one) == 4 and eight.keys() == one.keys()
  assert {task for _, task in one} == {"video_text", "audio_classification", "image_text"}
  for key, value in one.items():  # every step, to float tolerance
    assert eight[key] == pytest.approx(value, rel=1e-5), key


def test_a_mesh_that_does_not_divide_batch_multiple_is_refused(root):

  config = dataclasses.replace(make_config(root), batch_multiple=4)
  with pytest.raises(ConfigError, match=r"batch_multiple 4 does not split over this run's 8 batch "
                                        r"shards .* Set batch_multiple=8 in the config"):
    inputs.batch_multiple(config, 8)
  assert inputs.batch_multiple(config, 2) == 4


def test_two_processes_with_jax_distributed_train_like_one(one_device, tmp_path):
  import socket
  config, one, _ = one_device
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device each
  procs = [run_devices(config, tmp_path / "two", env, ["--coordinator", f"127.0.0.1:{port}",
                                                        "--num-processes", "2",
                                                        "--process-id", str(i)])
           for i in range(2)]
  outputs = [p.communicate(timeout=500)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  assert "on 2 device(s), mesh {'data': 1, 'expert': 2}" in outputs[0]
  two = losses(tmp_path / "two")
  assert two.keys() == one.keys() and len(two) == 4
  for key, value in one.items():
    assert two[key] == pytest.approx(value, rel=1e-5), key


def test_any_split_is_evaluated_from_the_last_checkpoint(learned):
  from impax.datasets import prepared
  from impax.train import evaluate
  config, workdir, _, _ = learned
  before = (workdir / "eval.json").read_text()
  result = evaluate.evaluate_checkpoint(config, str(workdir), log=lambda *_: None, split="train")
  assert result["step"] == 40
  videos = prepared.open_dataset(config.tasks[0].dataset).num_records("train")
  sounds = prepared.open_dataset(config.tasks[1].dataset).num_records("train")
  assert (result["results"]["video_text"]["split"], result["results"]["video_text"]["examples"]) == (
      "train", videos)
  assert result["results"]["audio_classification"]["examples"] == sounds
  written = json.loads((workdir / "eval-train.json").read_text())
  assert written == {"step": 40, "checkpoint": "latest", "results": result["results"]}
  assert (workdir / "eval.json").read_text() == before  # the held-out figures stay
  with pytest.raises(ConfigError, match="no task's dataset has a split 'nosuch'"):
    evaluate.evaluate_checkpoint(config, str(workdir), log=lambda *_: None, split="nosuch")


def test_periodic_validation_keeps_the_best_checkpoint_and_the_end_evaluates_it(root, tmp_path):
  from impax.train import evaluate
  # The shared datasets have no validation split: their test split stands in for it here.
  config = make_config(root, steps=4, eval_every=2, checkpoint_every=2, validation_split="test",
                       keep_best="video_text/zero_shot_top1")
  logged = []
  summary = trainer.train(config, str(tmp_path), log=logged.append)
  periodic = [r for r in metrics.read(str(tmp_path / "metrics.jsonl")) if "eval" in r]
  assert [(r["step"], r["split"]) for r in periodic] == [(2, "test"), (4, "test")]
  figures = {r["step"]: r["eval"] for r in periodic}
  values = {step: e["video_text"]["zero_shot_top1"] for step, e in figures.items()}
  best = max(values, key=lambda step: (values[step], -step))  # ties keep the earlier
  record = json.loads((tmp_path / "best.json").read_text())
  assert record == {"step": best, "figure": "video_text/zero_shot_top1", "value": values[best],
                    "split": "test"}
  assert summary["best"] == record and os.listdir(tmp_path / "best") == [str(best)]
  # the end evaluates the best checkpoint, restored from disk: every figure of every task is
  # the periodic evaluation's at that step (the same split here)
  evaluated = json.loads((tmp_path / "eval.json").read_text())
  assert (evaluated["checkpoint"], evaluated["step"]) == ("best", best)
  for task, result in figures[best].items():
    assert {k: v for k, v in evaluated["results"][task].items() if k != "protocols"} == \
        {k: v for k, v in result.items() if k != "protocols"}, task
  video = evaluated["results"]["video_text"]
  assert "zero_shot_top1/single_view" in video  # eval_clips 2: the centre view beside
  assert video["protocols"]["zero_shot_top1"].endswith("2 clips x 1 crops averaged")
  assert video["protocols"]["zero_shot_top1/single_view"].endswith("centre clip, centre crop")
  # `impax eval --checkpoint best --probe`: the same figures, and linear probes on the frozen
  # embeddings (cached: a second probe reads them back)
  again = evaluate.evaluate_checkpoint(config, str(tmp_path), log=lambda *_: None,
                                       checkpoint_name="best", probe=True)
  assert again["step"] == best and again["results"]["video_text"]["zero_shot_top1"] == values[best]
  probe = again["results"]["audio_classification"]["linear_probe_top1/spectrogram"]
  assert 0 <= probe <= 1
  cached = sorted(os.listdir(tmp_path / "embeddings" / f"step-{best}"))
  assert len(cached) == 4 and all(name.endswith(".npz") for name in cached)  # train and test
  assert evaluate.evaluate_checkpoint(config, str(tmp_path), log=lambda *_: None,
                                      checkpoint_name="best", probe=True) == again


def test_buckets_that_differ_only_in_sound_length_each_get_their_program(root, tmp_path):
  # The same video, two sound lengths: a program keyed by the video's shape alone was
  # called with the other bucket's spectrogram (issue 31).
  task = Task("video_audio", os.path.join(root, "videos"), "contrastive", ("video", "spectrogram"),
              buckets=(Bucket(video=(2, 16, 16), audio_seconds=0.32, batch_size=8),
                       Bucket(video=(2, 16, 16), audio_seconds=0.64, batch_size=8)))
  config = TrainConfig(tasks=(task,), model="tiny", steps=5, warmup_steps=1, log_every=1,
                       eval_at_end=False, plots=False)  # buckets 1, 1, 1, 1, 0 (seed 0)
  summary = trainer.train(config, str(tmp_path), log=lambda *_: None)
  assert summary["status"] == "finished" and summary["xla_compilations_in_loop"] == 0
  assert summary["compilations"] == {"video_audio 8x2x16x16x3+8x32x128": 1,
                                     "video_audio 8x2x16x16x3+8x64x128": 1}
  seen = {shape for r in metrics.read(str(tmp_path / "metrics.jsonl")) if "loss" in r
          for shape in r["shapes"]}
  assert seen == {"8x2x16x16x3+8x32x128", "8x2x16x16x3+8x64x128"}  # both buckets ran


def test_a_tokenizer_with_more_pieces_than_the_vocabulary_is_refused(root, tmp_path):
  # JAX clamps out-of-range ids to the last embedding row: such a run trained to its end
  # (issue 31). Refused before anything runs, both sizes named.
  base = make_config(root, steps=1, eval_at_end=False)
  config = dataclasses.replace(base, tasks=base.tasks[:1], model_overrides=(("vocab_size", 100),))
  pieces = json.loads(open(os.path.join(root, "videos", "metadata.json")).read())[
      "tokenizer"]["vocab_size"]
  with pytest.raises(ConfigError, match=rf"task 'video_text': .*tokenizer.model, of {pieces} "
                                        r"pieces, but model 'tiny' has a vocabulary of 100 "
                                        rf"\(vocab_size\): set model_overrides=\(\(\"vocab_size\", "
                                        rf"{pieces}\),\)"):
    trainer.train(config, str(tmp_path / "run"), log=lambda *_: None)
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")
  with_room = dataclasses.replace(config, model_overrides=(("vocab_size", pieces),))
  inputs.check_datasets(with_room)  # a vocabulary as large as the tokenizer is enough


class _Poisoned:
  """A loader's iterator whose batches at the given steps (1-based) carry a NaN spectrogram."""

  def __init__(self, it, steps):
    self.it, self.steps, self.taken = it, set(steps), 0

  def __next__(self):
    batch = next(self.it)
    self.taken += 1
    if self.taken in self.steps:
      batch = dict(batch, spectrogram=np.full_like(batch["spectrogram"], np.nan))
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)

  def close(self):
    self.it.close()


def test_a_nonfinite_step_is_skipped_and_a_diverged_run_stops_without_saving_it(root, tmp_path):
  from impax.train import checkpoint, step as step_lib
  base = make_config(root, steps=10, checkpoint_every=2, keep_checkpoints=10, max_nonfinite_steps=3,
                     eval_at_end=False)
  config = dataclasses.replace(base, tasks=base.tasks[1:])  # audio classification alone
  built = setup.setup(config)
  loader = built.loaders["audio_classification"]
  # Steps 3-4: two in a row, skipped, the run goes on; 6-8: three in a row stop it.
  poisoned = _Poisoned(iter(loader), steps=(3, 4, 6, 7, 8))
  logged = []
  summary = trainer.train(config, str(tmp_path), log=logged.append,
                          iterators={"audio_classification": poisoned})
  assert (summary["status"], summary["step"]) == ("diverged", 8)
  assert summary["reason"].startswith("training diverged: the loss or gradient was not finite "
                                      "in 3 steps in a row, to step 8 (max_nonfinite_steps 3; ")
  assert "the last checkpoint is step 6" in summary["reason"]
  assert summary["nonfinite_steps"]["in_all"] == 5
  assert [s["step"] for s in summary["nonfinite_steps"]["last"]] == [3, 4, 6, 7, 8]
  assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
  assert any(line.startswith("step 3: non-finite loss or gradient (audio_classification bucket 0 "
                             "(audio 0.32 s: 8x32x128) loss nan, gradient norm nan): update "
                             "skipped, 1 in a row, 1 in all") for line in logged), logged
  rows = metrics.read(str(tmp_path / "metrics.jsonl"))
  assert sorted({r["step"] for r in rows if "loss" in r}) == [1, 2, 5]
  assert [r["step"] for r in rows if r.get("nonfinite")] == [3, 4, 6, 7, 8]
  # The skipped steps left parameters and optimizer state as they were; nothing was saved
  # after the last of them.
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [2, 4, 6]
  ckpt = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), 10, create=False)
  target = step_lib.init_state(config, built.model_cfg, step_lib.make_optimizer(config), None)
  state = {}
  for s in (2, 4, 6):
    state[s] = ckpt.manager.restore(s, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]
  leaves = lambda s: [np.asarray(x) for x in jax.tree.leaves(state[s])]
  assert all(np.array_equal(a, b) for a, b in zip(leaves(2), leaves(4)))
  assert not all(np.array_equal(a, b) for a, b in zip(leaves(4), leaves(6)))  # step 5 trained
  assert all(np.isfinite(x).all() for s in state for x in leaves(s) if x.dtype.kind == "f")
  ckpt.close()


def test_a_checkpoint_with_a_nonfinite_parameter_is_never_restored(tmp_path):
  from impax.train import checkpoint
  state = {"params": {"w": np.ones((2, 3), np.float32)}, "opt_state": {"count": np.array(4, np.int32)}}
  ckpt = checkpoint.Checkpoints(str(tmp_path), 3)
  ckpt.save(4, state, {}, {"step": 4})
  bad = {"params": {"w": np.array([[1, np.nan, 1], [1, 1, np.inf]], np.float32)},
         "opt_state": {"count": np.array(5, np.int32)}}
  ckpt.save(5, bad, {}, {"step": 5})
  ckpt.manager.wait_until_finished()
  with pytest.raises(checkpoint.NonFiniteCheckpoint, match=r"the checkpoint of step 5 \(.*/5\) "
                                                           r"holds non-finite parameters"):
    ckpt.restore_latest(state)
  ckpt.close()


AUDIO_CONFIG_FILE = '''
from impax.datasets.loader import Bucket
from impax.train.config import Task, TrainConfig

def get_config(data):
  return TrainConfig(
      tasks=(Task("audio_classification", data + "/audio", "classification", ("spectrogram",),
                  buckets=(Bucket(audio_seconds=0.32),), token_budget=512),),
      model="tiny", steps=2, warmup_steps=1, learning_rate=2e-3, log_every=1,
      eval_at_end=False, plots=False)
'''


def test_resuming_under_a_config_that_changes_the_run_is_refused(root, tmp_path):
  (tmp_path / "config.py").write_text(AUDIO_CONFIG_FILE)
  config_file, workdir = f"{tmp_path / 'config.py'}:{root}", tmp_path / "run"
  config = config_lib.load(config_file)
  assert trainer.train(config, str(workdir), log=lambda *_: None)["status"] == "finished"
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["seed"] == 0 and recorded["tasks"][0]["buckets"][0]["audio_seconds"] == 0.32
  # `impax train ... --set seed=7` on it: one line naming each field and its two values
  command = [sys.executable, "-m", "impax.cli", "train", config_file, "--workdir", str(workdir),
             "--set", "seed=7", "--set", "learning_rate=0.01", "--set", "steps=4"]
  refused = subprocess.run(command, capture_output=True, text=True, timeout=240)
  assert refused.returncode == 2, refused.stdout + refused.stderr
  assert refused.stderr.splitlines() == [
      f"impax: error: {workdir} holds a run started under another config "
      f"({workdir / 'config.json'}): seed 0 -> 7; learning_rate 0.002 -> 0.01. These define the "
      "run: resuming would go on as another run. Train in a new workdir, or pass "
      "--allow-config-change (the train flow's allow_config_change) if you mean to; steps, "
      "logging, checkpoint and evaluation settings may change without it"]
  # a task's data or buckets, too (here as `--set` sets one bucket's sound)
  other = config_lib.apply_overrides(
      config, ["tasks.audio_classification.buckets.0.audio_seconds=0.64"])
  with pytest.raises(ConfigError, match=r"tasks\['audio_classification'\]\.buckets "
                                        r"\[\{.*\"audio_seconds\":0\.32.*\}\] -> \[\{.*"
                                        r"\"audio_seconds\":0\.64.*\}\]"):
    trainer.train(other, str(workdir), log=lambda *_: None)
  # what extends the run may change: more steps, another cadence
  longer = config_lib.apply_overrides(config, ["steps=3", "checkpoint_every=1"])
  logged = []
  summary = trainer.train(longer, str(workdir), log=logged.append)
  assert (summary["status"], summary["step"]) == ("finished", 3)
  assert "resuming with steps 2 -> 3" in logged and "resumed from step 2" in logged
  assert [c["field"] for c in summary["config_changes"]] == ["steps", "checkpoint_every"]
  assert summary["allow_config_change"] is False
  # and the rest, when asked: recorded in summary.json, and config.json is the new config
  reseeded = config_lib.apply_overrides(longer, ["seed=7", "steps=4"])
  summary = trainer.train(reseeded, str(workdir), log=lambda *_: None, allow_config_change=True)
  assert (summary["status"], summary["step"]) == ("finished", 4)
  written = json.loads((workdir / "summary.json").read_text())
  assert written["allow_config_change"] is True
  assert {"field": "seed", "was": 0, "now": 7, "defines_the_run": True} in written["config_changes"]
  assert json.loads((workdir / "config.json").read_text())["seed"] == 7


def test_a_run_resumes_with_its_layers_scanned_otherwise(root, tmp_path):
  """scan_layers changes how the model compiles, not what it computes: a run checkpointed
  scanned resumes unrolled (its checkpoint converted) and takes the steps the unrolled
  run takes; a change to what the model computes is still refused."""
  (tmp_path / "config.py").write_text(AUDIO_CONFIG_FILE)
  # Dense: an MoE's routing is a discrete choice that float noise between the scanned
  # and unrolled programs can flip (tests/model/test_scan.py compares those to tolerance).
  dense = (("moe_layers", ()), ("num_experts", 0))
  config = dataclasses.replace(
      config_lib.load(f"{tmp_path / 'config.py'}:{root}"), steps=4, checkpoint_every=2,
      model_overrides=dense)
  scanned = dataclasses.replace(config, model_overrides=(*dense, ("scan_layers", True)))
  trainer.train(config, str(tmp_path / "whole"), log=lambda *_: None)
  trainer.train(scanned, str(tmp_path / "parts"), log=lambda *_: None, stop_at=2)
  logged = []
  summary = trainer.train(config, str(tmp_path / "parts"), log=logged.append)
  assert summary["step"] == 4 and "resumed from step 2" in logged
  assert [c["defines_the_run"] for c in summary["config_changes"]] == [False]
  whole, parts = losses(tmp_path / "whole"), losses(tmp_path / "parts")
  assert whole.keys() == parts.keys() and len(whole) == 4
  for key in whole:
    assert parts[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key
  other = dataclasses.replace(config, model_overrides=(*dense, ("width", 32)), steps=5)
  with pytest.raises(ConfigError, match="model_overrides"):
    trainer.train(other, str(tmp_path / "parts"), log=lambda *_: None)
