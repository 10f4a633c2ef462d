"""The demo's flows: its datasets built from its corpus, and the demo end to end.

    python -m impax.flows.demo demo-output [--steps N] [--workers N]    # make demo
    impax demo DIR [--steps N] [--workers N]                             # the same run

1. end_to_end_demo (the flow named end_to_end, as the deployment end_to_end/end-to-end-demo
   runs it): the demo corpus generated under ROOT/corpus (digits in videos, images and
   sounds; impax/demo.py), then end_to_end's steps on it (flows/end_to_end.py): every
   build into ROOT/data, training with the demo's config (train/configs/demo.py) in
   ROOT/run, evaluation, and the report with the demo's zero-shot goal.
2. build_demo_dataset: one demo dataset built from ROOT/corpus, as the nightly
   deployments do; on a root whose corpus is not generated yet it refuses, saying what
   to run first. A build of new data starts train-demo (flows/deployments.py).

With no PREFECT_API_URL, Prefect starts its local ephemeral server for the run; the
runs, logs and artifacts stay in its database (PREFECT_HOME, ~/.prefect by default),
so `prefect server start` shows them afterwards. With PREFECT_API_URL set, the run
goes to that server.
"""

import argparse
import os
import sys
import time
from typing import Annotated, Literal

import pydantic
from prefect import flow, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED,
                              PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, PREFECT_UI_URL,
                              temporary_settings)
from prefect.states import Failed

from impax import demo as demo_lib
from impax.flows import end_to_end as end_to_end_lib
from impax.flows.build import BuildOptions, Split, build_splits
from impax.flows.end_to_end import Corpus

DEMO_DATASETS = ("videos", "images", "audio")
# The report's and the printout's goal: zero-shot top-1 on the held-out videos.
GOAL = (demo_lib.ZERO_SHOT_TASK, demo_lib.ZERO_SHOT_GOAL)


# -- the demo's datasets --------------------------------------------------------


def _build_run_name() -> str:
  params = runtime.flow_run.parameters
  return f"build {params.get('dataset', 'images')} [{', '.join(demo_lib.SPLITS)}] of the demo"


@flow(name="build_demo_dataset", flow_run_name=_build_run_name)
def build_demo_dataset(
    root: str = "demo-output",
    dataset: Literal[DEMO_DATASETS] = "images",
    rebuild_changed: bool = True,
    workers: Annotated[int, pydantic.Field(ge=1)] | None = None,
    retries: Annotated[int, pydantic.Field(ge=0)] = 2,
    retry_delay_seconds: Annotated[float, pydantic.Field(ge=0)] = 30.0,
    timeout_minutes: Annotated[float, pydantic.Field(gt=0)] = 360.0,
) -> dict[str, dict]:
  """Builds one demo dataset, ROOT/data/DATASET, from the demo corpus in ROOT/corpus.

  Args:
    root: the demo's folder (`impax demo-corpus ROOT/corpus` or end_to_end writes its corpus).
    dataset: which demo dataset.
    rebuild_changed: a split whose corpus file changed since it was built is built again
      (the nightly build's new data); off, such a build is refused.
    workers, retries, retry_delay_seconds, timeout_minutes: as build_dataset's.

  Returns: {split: the build's summary}.
  """
  root = os.path.abspath(root)  # the event names it for the training it starts
  corpus = os.path.join(root, "corpus")
  splits = [Split(name=split, input=os.path.join(corpus, f"{dataset}-{split}.jsonl"))
            for split in demo_lib.SPLITS]
  settings = demo_lib.settings(corpus)
  if not all(os.path.exists(p) for p in [*(s.input for s in splits), settings["tokenizer"]]):
    # A schedule on a fresh root: say what to run, rather than fail inside the build.
    return Failed(message=f"no demo corpus in {corpus} yet: generate it first with "
                          f"`impax demo-corpus {corpus}` (or run end_to_end on {root})")
  resource = {"prefect.resource.id": f"impax.demo.{root}.{dataset}",
              "prefect.resource.name": f"demo {dataset}"}
  # What the train-demo deployment's trigger passes to the training it starts.
  # A run per version of the data (flows/train.py resolves `{data}`): new data trains anew.
  payload = {"root": root, "config": demo_lib.config_for(root),
             "workdir": os.path.join(root, "runs", "{data}")}
  return build_splits("jsonl", os.path.join(root, "data", dataset), splits, (settings,),
                      "changed" if rebuild_changed else False, workers, retries,
                      retry_delay_seconds, timeout_minutes, resource, payload)


# -- the demo end to end --------------------------------------------------------


class DemoCorpus(pydantic.BaseModel):
  """Sizes of the generated demo corpus (all splits together); the demo's by default."""
  model_config = pydantic.ConfigDict(extra="forbid")
  videos: int = pydantic.Field(demo_lib.SIZES["videos"], ge=10)
  images: int = pydantic.Field(demo_lib.SIZES["images"], ge=10)
  audio: int = pydantic.Field(demo_lib.SIZES["audio"], ge=10)
  seed: int = 0


@task(name="generate_demo_corpus", task_run_name="generate_demo_corpus", cache_policy=NO_CACHE)
def generate_demo_corpus(root: str, demo: DemoCorpus) -> list[Corpus]:
  """Writes the demo corpus under root/corpus; returns its datasets to build under root/data."""
  corpus = os.path.join(root, "corpus")
  manifests = demo_lib.write_corpus(corpus, videos=demo.videos, images=demo.images,
                                    audio=demo.audio, seed=demo.seed)
  splits = {}
  for key, manifest in manifests.items():  # train before test: train fixes the vocabularies
    modality, split = key.rsplit("-", 1)
    splits.setdefault(modality, []).append(Split(name=split, input=manifest))
  return [Corpus(spec="jsonl", output=os.path.join(root, "data", modality), splits=s,
                 options=BuildOptions(**demo_lib.settings(corpus)))
          for modality, s in splits.items()]


# Named end_to_end: its runs are end_to_end's steps, and the deployment that runs it is
# end_to_end/end-to-end-demo.
@flow(name="end_to_end", flow_run_name="end to end in {root}")
def end_to_end_demo(
    root: str = "demo-output",
    corpora: list[Corpus] | None = None,
    demo: DemoCorpus | None = None,
    config: str | None = None,
    steps: Annotated[int, pydantic.Field(ge=1)] | None = None,
    overrides: list[Annotated[str, pydantic.Field(pattern=r"^\w+(\.\w+)*=")]] | None = None,
    workers: Annotated[int, pydantic.Field(ge=1)] | None = None,
) -> dict:
  """The demo corpus generated, built, trained and evaluated on, and a report (`make demo`).

  Args:
    root: the demo corpus goes to root/corpus, its datasets to root/data, the run to root/run.
    corpora: your corpora instead of the demo's, as end_to_end's.
    demo: the demo corpus's sizes.
    config: the training config (FILE or FILE:ARG); default: the demo's on root/data.
      Required with your corpora.
    steps, overrides, workers: as end_to_end's.

  Returns: end_to_end's result.
  """
  if corpora is not None:
    if config is None:
      raise ValueError("config: a training config is required with your own corpora "
                       "(the demo's expects the demo datasets)")
    return end_to_end_lib.run(root, corpora, config, steps, overrides, workers)
  corpora = generate_demo_corpus(root, demo or DemoCorpus())
  return end_to_end_lib.run(root, corpora, config or demo_lib.config_for(root), steps,
                            overrides, workers, goal=GOAL)


# -- make demo, impax demo ----------------------------------------------------------


def run_demo(root: str, steps: int | None = None, workers: int | None = None) -> int:
  """end_to_end_demo on root, then the printout; the exit status (print_summary's)."""
  # Unless set in the environment: offline, the server's telemetry only logs failures;
  # the first start of the ephemeral server creates its database, which on a busy
  # 2-core machine takes longer than Prefect's default 20 s wait.
  defaults = {PREFECT_SERVER_ANALYTICS_ENABLED: False,
              PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}
  with temporary_settings(updates={setting: value for setting, value in defaults.items()
                                   if setting.name not in os.environ}):
    start = time.monotonic()
    state = end_to_end_demo(root=root, steps=steps, workers=workers, return_state=True)
    run_id = state.state_details.flow_run_id
    ui = PREFECT_UI_URL.value() if PREFECT_API_URL.value() else "http://127.0.0.1:4200"
    where = (f"\nPrefect flow run {run_id} ({state.name}): its logs and artifacts (datasets, "
             f"training curves, evaluation, report) are at {ui}/runs/flow-run/{run_id}"
             + ("" if PREFECT_API_URL.value() else " once `prefect server start` runs"))
    if not state.is_completed():
      print(f"end_to_end failed: {state.message}{where}", file=sys.stderr)
      return 1
    result = state.result()
  return print_summary(root, result["train"]["workdir"], result["train"]["eval"],
                       time.monotonic() - start, where)


def print_summary(root: str, workdir: str, results: dict, seconds: float, where: str = "") -> int:
  """Prints where the demo's datasets and run are and its zero-shot results; the exit status.

  Args:
    root: the demo's folder (its datasets are in root/data).
    workdir: the training run's folder.
    results: the evaluation, {task: metrics} (eval.json's results).
    seconds: the demo's time, building and training.
    where: more to say after the time, e.g. where the Prefect run is.

  Returns: 0, or 1 when the run has no zero-shot result on the demo's videos.
  """
  print(f"\nprepared datasets: {os.path.join(root, 'data')}\nrun: {workdir} (metrics.jsonl, "
        f"tensorboard/, plots/, eval.json)\ntotal time: {seconds:.0f} s{where}")
  for line in end_to_end_lib.zero_shot_lines(results, GOAL):
    print(line)
  if "zero_shot_top1" not in results.get(GOAL[0], {}):
    print("no zero-shot result: the run did not finish")
    return 1
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m impax.flows.demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("root", metavar="DIR", nargs="?", default="demo-output")
  parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
  parser.add_argument("--workers", type=int, default=None, help="build workers (default: CPUs)")
  args = parser.parse_args(argv)
  return run_demo(args.root, steps=args.steps, workers=args.workers)


if __name__ == "__main__":
  sys.exit(main())
