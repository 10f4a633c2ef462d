"""end_to_end (and the train flow it runs) against a real Prefect server, on a tiny run."""

import json
import os

import pytest


@pytest.fixture(scope="module")
def run(images, tiny_config, tmp_path_factory):
  """end_to_end on the image dataset (your corpora), 3 training steps: (root, final state)."""
  from impax.flows.end_to_end import end_to_end
  params, built = images
  assert built.is_completed()
  root = str(tmp_path_factory.mktemp("e2e") / "out")
  corpus = {k: params[k] for k in ("spec", "output", "splits", "options")}
  state = end_to_end(root=root, corpora=[corpus], config=f"{tiny_config}:{params['output']}",
                     steps=3, workers=1, return_state=True)
  return root, state


def test_end_to_end_builds_trains_evaluates_and_reports(run, images, api):
  root, state = run
  params, _ = images
  assert state.is_completed(), state.message
  result = state.result()
  assert result["train"]["summary"]["step"] == 3  # steps=3 won over the config's 10
  run_id = state.state_details.flow_run_id
  subflows = api.subflow_runs(run_id)
  assert {name: r["state"]["type"] for name, r in subflows.items()} == {
      "build_dataset": "COMPLETED", "train": "COMPLETED"}
  # the corpus was built before, unchanged: served from the cache
  builds = api.task_runs(subflows["build_dataset"]["id"])
  assert builds["build train"]["state"]["name"] == builds["build test"]["state"]["name"] == "Cached"

  report = api.artifacts(run_id)["end-to-end-out"]
  assert report == result["report"]
  assert f"| {params['output']} | train | 24 | 2 | 2 |" in report
  top1 = result["train"]["eval"]["image_text"]["zero_shot_top1"]
  assert (f"zero-shot classification (image_text) of 6 test examples: top-1 {top1:.1%}"
          in report)
  assert f"- run: `{os.path.join(root, 'run')}`" in report


def test_train_publishes_curves_and_evaluation(run, api):
  root, state = run
  workdir = os.path.join(root, "run")
  train_run = api.subflow_runs(state.state_details.flow_run_id)["train"]
  found = api.artifacts(train_run["id"])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [(r["step"], r["task"], r["loss"]) for r in found["training-curves-run"]] == [
      (r["step"], r["task"], round(r["loss"], 5)) for r in logged if "loss" in r]
  assert [r["step"] for r in found["training-curves-run"]] == [1, 2, 3]
  assert found["training-plots-run"].count("](data:image/png;base64,") == 2  # loss, accuracy
  # the mixture it trained on, as `impax plan` counts it: one task, every step, 24 images
  [plan] = found["training-plan-run"]
  assert (plan["task"], plan["steps"], plan["share of steps"], plan["examples"]) == (
      "image_text", 3, 1.0, 24)
  assert plan["epochs"] == pytest.approx(3 * int(plan["batch per bucket"]) / 24, abs=1e-4)
  with open(os.path.join(workdir, "eval.json")) as f:
    evaluated = json.load(f)
  assert evaluated["step"] == 3
  published = {(r["task"], r["metric"]): r["value"] for r in found["evaluation-run"]}
  assert published[("image_text", "zero_shot_top1")] == evaluated["results"]["image_text"]["zero_shot_top1"]
  assert published[("image_text", "image_to_text/R@1")] == evaluated["results"]["image_text"]["image_to_text/R@1"]
  # each figure with the protocol that made it, as eval.json names it
  protocols = {(r["task"], r["metric"]): r["protocol"] for r in found["evaluation-run"]}
  assert protocols[("image_text", "zero_shot_top1")].startswith("zero-shot classification: top-1")
  assert protocols[("image_text", "zero_shot_top1")] == \
      evaluated["results"]["image_text"]["protocols"]["zero_shot_top1"]
  # the trainer's log lines are the run's logs
  logs = api.logs(train_run["id"])
  assert "compiled image_text" in logs and "finished at step 3" in logs


def test_bad_training_parameters_are_refused_with_the_field_named(images, tiny_config, tmp_path,
                                                                 api):
  from prefect.exceptions import ParameterBindError, ParameterTypeError

  from impax.flows.demo import end_to_end_demo
  from impax.flows.end_to_end import end_to_end
  from impax.flows.train import train
  from impax.train.config import ConfigError
  params, _ = images
  config = f"{tiny_config}:{params['output']}"
  with pytest.raises(ParameterTypeError, match=r"steps"):
    train(config=config, workdir=str(tmp_path / "run"), steps=0)
  with pytest.raises(ParameterTypeError, match=r"overrides\.0"):
    train(config=config, workdir=str(tmp_path / "run"), overrides=["no value"])
  # Refused before training, and not retried.
  state = train(config=config, workdir=str(tmp_path / "run"), overrides=["learning_rate=fast"],
                return_state=True)
  assert state.is_failed()
  with pytest.raises(ConfigError, match=r"learning_rate"):
    state.result()
  runs = api.task_runs(state.state_details.flow_run_id)
  assert [r["run_count"] for name, r in runs.items() if name.startswith("load_config")] == [1]
  assert not any(name.startswith("train_model") for name in runs)
  # The demo's flow takes your corpora too, with their config; end_to_end always needs one.
  corpora = [{"output": params["output"], "splits": params["splits"]}]
  with pytest.raises(ValueError, match=r"config: a training config is required"):
    end_to_end_demo(root=str(tmp_path), corpora=corpora)
  with pytest.raises(ParameterBindError, match=r"config"):
    end_to_end(root=str(tmp_path), corpora=corpora)
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_diverged_run_fails_the_train_flow_without_retries(images, tiny_config, tmp_path, api):
  """A retry from the last finite checkpoint would diverge again: the flow fails at once."""
  from impax.flows.train import TrainingDiverged, train
  params, _ = images
  state = train(config=f"{tiny_config}:{params['output']}", workdir=str(tmp_path / "run"),
                overrides=["learning_rate=1e9", "max_nonfinite_steps=2", "steps=8"],
                retry_delay_seconds=0.1, return_state=True)
  assert state.is_failed()
  with pytest.raises(TrainingDiverged, match=r"training diverged"):
    state.result()
  runs = api.task_runs(state.state_details.flow_run_id)
  assert [r["run_count"] for name, r in runs.items() if name.startswith("train_model")] == [1]
