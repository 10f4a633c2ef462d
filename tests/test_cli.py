"""The `impax` command: subcommands and help."""

import json
import subprocess
import sys


def run(*args):
  return subprocess.run([sys.executable, "-m", "impax.cli", *args], capture_output=True, text=True,
                        timeout=120)


def test_help_lists_the_subcommands():
  result = run("--help")
  assert result.returncode == 0
  for command in ("build", "inspect", "specs", "demo-corpus", "demo"):
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
