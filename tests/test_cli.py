"""The `impax` command: subcommands and help."""

import json
import subprocess
import sys

from impax.pipelines import build


def run(*args):
  return subprocess.run([sys.executable, "-m", "impax.cli", *args], capture_output=True, text=True,
                        timeout=120)


def test_help_lists_the_subcommands():
  result = run("--help")
  assert result.returncode == 0
  for command in ("build", "inspect", "card", "verify", "dedup", "specs", "demo-corpus", "demo"):
    assert command in result.stdout
  build = run("build", "--help")
  assert build.returncode == 0
  assert "--video-fps" in build.stdout and "[8.0]" in build.stdout and "-- beam pipeline options" in build.stdout


def test_specs_and_errors():
  assert run("specs").stdout.startswith("jsonl")
  missing = run("inspect", "/nonexistent/dataset")
  assert missing.returncode == 2 and "has no metadata.json" in missing.stderr
  assert run("nosuch").returncode == 2


def test_model_info_prints_the_counts_of_a_preset():
  result = run("model", "info", "B")
  assert result.returncode == 0, result.stderr
  counts = json.loads(result.stdout)
  assert abs(counts["encoder_params"] / 86e6 - 1) < 0.03
  assert counts["active_params_per_token"] <= counts["total_params"]
  assert run("model", "info", "XL").returncode == 2


def test_demo_corpus_writes_the_manifests_and_one_tokenizer_for_them(tmp_path):
  result = run("demo-corpus", str(tmp_path), "--videos", "10", "--images", "10", "--audio", "10")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "videos-train.jsonl").exists() and (tmp_path / "images-test.jsonl").exists()
  tokenizer = tmp_path / "tokenizer.model"
  assert tokenizer.stat().st_size > 0
  assert f"--tokenizer {tokenizer}" in result.stdout


def test_a_build_summary_reads_as_a_line_and_one_naming_the_failures():
  summary = {"output": "/data/images", "split": "train", "num_examples": 24, "num_failed": 2,
             "shards": [{"num_bytes": 600_000}, {"num_bytes": 400_000}], "build_seconds": 3.21,
             "failures_by_stage": {"read": 1, "parse": 1}, "failures": "failures-train.jsonl"}
  assert build.describe(summary) == (
      "/data/images [train]: 24 examples, 2 failed, 2 shard(s), 1.0 MB, 3.2 s\n"
      "  failures by stage: read: 1, parse: 1; see /data/images/failures-train.jsonl")
  cached = {**summary, "num_failed": 0, "skipped": "already built"}
  assert build.describe(cached) == (
      "/data/images [train]: 24 examples, 0 failed, 2 shard(s), 1.0 MB (already built)")


def test_set_reaches_a_task_by_its_name_and_names_a_wrong_field(tmp_path):
  config = tmp_path / "config.py"
  config.write_text(
      "from impax.train.config import Bucket, Task, TrainConfig\n"
      "def get_config():\n"
      "  return TrainConfig(tasks=(Task('video_text', 'videos', 'contrastive', ('video', 'text'),\n"
      "                                 buckets=(Bucket(video=(4, 16, 16)),)),))\n")
  assert "tasks.video_text.token_budget=4096" in " ".join(run("train", "--help").stdout.split())
  # Set, the task's dataset is the one looked for.
  moved = run("plan", str(config), "--set", f"tasks.video_text.dataset={tmp_path / 'elsewhere'}")
  assert moved.returncode == 3 and f"{tmp_path / 'elsewhere'}" in moved.stderr, moved.stderr
  wrong = run("plan", str(config), "--set", "tasks.video_text.token_budgt=4096")
  assert wrong.returncode == 2
  assert wrong.stderr.startswith(
      "impax: error: --set 'tasks.video_text.token_budgt=4096': tasks.video_text has no field "
      "'token_budgt'; expected tasks.video_text.FIELD=VALUE with FIELD one of ['augment', ")
  bad = run("eval", str(config), "--workdir", str(tmp_path), "--set",
            "tasks.video_text.buckets.0.video=[4,16]")
  assert bad.returncode == 2 and bad.stderr == (
      "impax: error: --set 'tasks.video_text.buckets.0.video=[4,16]': "
      "tasks.video_text.buckets.0.video takes a JSON list [int, int, int] or null: 2 values, "
      "not 3\n")
