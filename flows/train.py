"""train: AGD training from prepared datasets (train/trainer.py), with artifacts.

    prefect deployment run train/impax --param config=train/configs/demo.py:demo-output/data \
        --param workdir=demo-output/run --param steps=200

1. load: the config file, its overrides and its datasets, checked before anything runs.
2. train_model: trains in workdir, retried: a retry (after a crash, a timeout, or the
   SIGTERM of a preempted machine, which leaves a checkpoint) resumes from the last
   checkpoint, as `impax train` run again does.
3. evaluate: the held-out splits (the trainer evaluates at the end; otherwise the
   latest checkpoint, as `impax eval`).
4. publish: the training curves (metrics.jsonl as a table, the PNG curves) and the
   evaluation results as artifacts.
"""

import base64
import os
from typing import Annotated

import pydantic
from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from impax.flows import artifact_key, retried_unless
from impax.train import metrics

# The trainer, its config and its evaluation import JAX: the tasks that run
# them import them, so loading the flows (`prefect deploy`, serve) stays fast.


class TrainingStopped(RuntimeError):
  """The trainer left before the last step (SIGTERM); the next attempt resumes."""


class TrainingDiverged(ValueError):
  """max_nonfinite_steps stopped the run: a retry from its last checkpoint would diverge
  again, so it is not retried."""


@task(name="load_config", task_run_name="load_config", cache_policy=NO_CACHE)
def load_config(config: str, overrides: list[str]):
  """The TrainConfig, refused here (not retried) when a field, task, dataset, bucket or the
  batch multiple is wrong, with the trainer's own checks (train/setup.py; each task's split
  is read by the trainer's loaders)."""
  from impax.train import config as config_lib, setup
  loaded = config_lib.load(config, overrides)
  setup.setup(loaded, loaders=False)
  return loaded


@task(name="train_model", task_run_name="train_model", cache_policy=NO_CACHE,
      # A refused resume (ValueError) or a diverged run comes again on every attempt.
      retry_condition_fn=retried_unless(ValueError))
def train_model(config, workdir: str, allow_config_change: bool = False) -> dict:
  """Trains, or resumes workdir's last checkpoint; returns the trainer's summary."""
  from impax.train import trainer
  logger = get_run_logger()
  summary = trainer.train(config, workdir, log=logger.info,
                          allow_config_change=allow_config_change)
  if summary["status"] == "diverged":
    raise TrainingDiverged(summary.get("reason") or f"training diverged at step {summary['step']}")
  if summary["status"] != "finished":
    raise TrainingStopped(f"training {summary['status']} at step {summary['step']} of "
                          f"{summary['steps']}; a retry resumes from its checkpoint")
  return summary


@task(name="evaluate", task_run_name="evaluate", cache_policy=NO_CACHE)
def evaluate(config_path: str, overrides: list[str], workdir: str, summary: dict) -> dict:
  """{task: metrics} of the final parameters on the held-out splits."""
  if "eval" in summary:  # evaluated by the trainer at its last step
    return summary["eval"]
  from impax.train import evaluate as evaluate_lib
  return evaluate_lib.main(config_path, workdir, overrides, log=get_run_logger().info)["results"]


def evaluation_rows(results: dict) -> list[dict]:
  """The evaluation table: a row per figure, with the protocol eval.json names for it."""
  return [{"task": t, "metric": k, "value": v, "protocol": result.get("protocols", {}).get(k, "")}
          for t, result in results.items() for k, v in result.items()
          if isinstance(v, (int, float))]


@task(name="publish", task_run_name="publish", cache_policy=NO_CACHE)
def publish(workdir: str, summary: dict, results: dict) -> None:
  name = os.path.basename(os.path.abspath(workdir))
  rows = [{"step": r["step"], "task": r["task"], "loss": round(r["loss"], 5),
           "accuracy": round(r["accuracy"], 5) if "accuracy" in r else None}
          for r in metrics.read(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
  create_table_artifact(rows, key=artifact_key("training-curves", name),
                        description=f"Training loss and accuracy per task ({workdir}/metrics.jsonl).")
  plots = [os.path.join(workdir, "plots", f"{k}.png") for k in ("loss", "accuracy")]
  if all(os.path.exists(p) for p in plots):
    # Inline, so the UI shows them without serving files from the workdir.
    images = "\n\n".join(f"![{os.path.basename(p)}](data:image/png;base64,{_base64(p)})"
                         for p in plots)
    create_markdown_artifact(
        f"# Training curves: {workdir}\n\n{summary['step']} steps, "
        f"{summary['loop_seconds']:.0f} s\n\n{images}\n",
        key=artifact_key("training-plots", name), description="loss.png and accuracy.png")
  if "plan" in summary:  # the mixture the run trained on, as `impax plan` prints it
    plan = summary["plan"]
    create_table_artifact(
        [{"task": task, "examples": t["examples"],
          "batch per bucket": "/".join(map(str, t["batch_sizes"])), "steps": t["steps"],
          "share of steps": t["share_of_steps"], "epochs": t["epochs"],
          "tokens per step": t["tokens_per_step"], "tokens": t["tokens"],
          "share of tokens": t["share_of_tokens"]} for task, t in plan["tasks"].items()],
        key=artifact_key("training-plan", name),
        description=(f"Each task's share of the {plan['steps']} steps (mode {plan['mode']}, "
                     f"schedule {plan['schedule']}), as `impax plan` counts them"
                     + "".join(f"; warning: {w}" for w in plan["warnings"]) + "."))
  create_table_artifact(
      evaluation_rows(results),
      key=artifact_key("evaluation", name),
      description=f"Held-out evaluation at step {summary['step']} ({workdir}/eval.json).")


def _base64(path: str) -> str:
  with open(path, "rb") as f:
    return base64.b64encode(f.read()).decode()


def run_name(verb: str) -> str:
  """`train demo`, `train demo seed 1, 200 steps`: the config file's name and what is set."""
  params = runtime.flow_run.parameters
  config = params.get("config") or "demo"  # end_to_end's default: the demo's
  name = os.path.splitext(os.path.basename(config.split(":", 1)[0]))[0]
  given = [o.replace("=", " ", 1) for o in params.get("overrides") or []]
  if params.get("steps"):
    given.append(f"{params['steps']} steps")
  return f"{verb} {name}" + (f" {', '.join(given)}" if given else "")


@flow(name="train", flow_run_name=lambda: run_name("train"))
def train(
    config: str,
    workdir: str,
    steps: Annotated[int, pydantic.Field(ge=1)] | None = None,
    overrides: list[Annotated[str, pydantic.Field(pattern=r"^\w+(\.\w+)*=")]] | None = None,
    retries: Annotated[int, pydantic.Field(ge=0)] = 2,
    retry_delay_seconds: Annotated[float, pydantic.Field(ge=0)] = 30.0,
    allow_config_change: bool = False,
) -> dict:
  """Trains an IMP model with AGD (`impax train`), evaluates it, and publishes both.

  Args:
    config: a Python config file defining get_config(); FILE:ARG passes ARG to it.
    workdir: checkpoints, metrics and plots; an existing run there is resumed. `{data}` in
      it stands for the version of the config's datasets (12 hex digits of their
      metadata.json), so that new data starts a run of its own and the same data resumes it.
    steps: training steps (default: the config's).
    overrides: FIELD=VALUE overrides of config fields, as `--set` (a task's by its name:
      tasks.video_text.token_budget=4096).
    retries: attempts after a failed training run; each resumes the last checkpoint.
    retry_delay_seconds: wait before the first retry, doubled for each next one.
    allow_config_change: resume a run in workdir even under a config that changes what
      defines it (seed, tasks, data, buckets, model, optimizer), as --allow-config-change;
      otherwise such a resume is refused. Recorded in the summary.

  Returns: {"summary": the trainer's summary, "eval": {task: metrics}, "workdir": ...}.
  """
  overrides = [*(overrides or []), *([f"steps={steps}"] if steps else [])]
  loaded = load_config(config, overrides)
  if "{data}" in workdir:
    from impax.train import inputs
    workdir = workdir.replace("{data}", inputs.data_version(loaded))
    get_run_logger().info("training on data %s in %s", os.path.basename(workdir), workdir)
  summary = train_model.with_options(
      retries=retries,
      retry_delay_seconds=exponential_backoff(retry_delay_seconds))(loaded, workdir,
                                                                    allow_config_change)
  results = evaluate(config, overrides, workdir, summary)
  publish(workdir, summary, results)
  return {"summary": summary, "eval": results, "workdir": workdir}


@flow(name="evaluate", flow_run_name=lambda: run_name("evaluate"))
def evaluate_checkpoint(
    config: str,
    workdir: str,
    overrides: list[Annotated[str, pydantic.Field(pattern=r"^\w+(\.\w+)*=")]] | None = None,
) -> dict:
  """Evaluates the latest checkpoint in workdir on the config's held-out splits (`impax eval`)
  and publishes the results as a table.

  Args:
    config: the training config (FILE or FILE:ARG) the checkpoint was trained with.
    workdir: the training run's folder; eval.json is written there.
    overrides: FIELD=VALUE overrides of the config, as at training.

  Returns: {task: metrics}.
  """
  results = evaluate(config, overrides or [], workdir, {})
  create_table_artifact(
      evaluation_rows(results),
      key=artifact_key("evaluation", os.path.basename(os.path.abspath(workdir))),
      description=f"Held-out evaluation of the latest checkpoint ({workdir}/eval.json).")
  return results
