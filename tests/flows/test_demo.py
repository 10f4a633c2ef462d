"""The demo's flows (flows/demo.py) off the production path; the corpus they build and the
printout of `make demo` and `impax demo`."""

import os
import subprocess
import sys

from impax import demo


def test_the_production_flows_load_no_demo():
  """A worker that runs build_dataset, train or end_to_end loads neither the demo's corpus
  generator nor what it needs (scikit-learn's digits, soundfile)."""
  loaded = subprocess.run(
      [sys.executable, "-c", "import sys\n"
       "import impax.flows.build, impax.flows.train, impax.flows.end_to_end\n"
       "print(sorted(m for m in ('impax.demo', 'sklearn', 'soundfile') if m in sys.modules))"],
      capture_output=True, text=True, timeout=300, check=True)
  assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_the_flow_builds_the_demo_with_the_shared_tokenizer(tmp_path):
  from impax.flows.demo import DemoCorpus, generate_demo_corpus
  corpora = generate_demo_corpus.fn(str(tmp_path), DemoCorpus(videos=10, images=10, audio=10))
  tokenizer = str(tmp_path / "corpus" / "tokenizer.model")
  assert os.path.getsize(tokenizer) > 0
  assert [c.options.tokenizer for c in corpora] == [tokenizer] * 3
  assert demo.settings(str(tmp_path / "corpus"))["tokenizer"] == tokenizer


def test_the_summary_names_the_folders_and_the_zero_shot_result_against_the_goal(capsys):
  from impax.flows.demo import print_summary
  from impax.flows.end_to_end import zero_shot_lines
  results = {"image_text": {"examples": 200, "split": "test", "zero_shot_top1": 0.675,
                            "zero_shot_chance": 0.1},
             "video_text": {"examples": 80, "split": "test", "zero_shot_top1": 0.725,
                            "zero_shot_chance": 0.1},
             "audio": {"examples": 40, "split": "test", "accuracy": 0.95}}
  assert print_summary("out", "out/run", results, 61.2) == 0
  printed = capsys.readouterr().out
  assert f"prepared datasets: {os.path.join('out', 'data')}\nrun: out/run (" in printed
  assert "total time: 61 s" in printed
  assert ("zero-shot classification (video_text) of 80 test examples: top-1 72.5% "
          "(chance 10%, goal 75%)") in printed
  assert "(image_text) of 200 test examples: top-1 67.5% (chance 10%)\n" in printed
  # The report of your own corpora shows no goal; a run without the videos' result fails.
  assert "goal" not in "".join(zero_shot_lines(results))
  assert print_summary("out", "out/run", {"image_text": results["image_text"]}, 1.0) == 1
  assert "no zero-shot result: the run did not finish" in capsys.readouterr().out
