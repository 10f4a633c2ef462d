"""The three flows as deployments, served from this process: run them from the Prefect UI.

    prefect server start --host 127.0.0.1                          # the UI and API, port 4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m impax.flows.serve --root demo-output

Deployments (each `FLOW/impax`): build_dataset, train, end_to_end; their parameters
form in the UI is generated from the flows' typed parameters, and a run with bad
values is refused. build_dataset carries a nightly rebuild schedule (02:00 UTC) of
the demo datasets under ROOT; it is off unless `--nightly` is given (or it is turned
on in the UI), and, cached, it only builds what changed. One run at a time: builds
and training each use every core.
"""

import argparse
import os

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from impax import demo
from impax.flows.build import build_dataset
from impax.flows.end_to_end import end_to_end
from impax.flows.train import train

NIGHTLY = "0 2 * * *"


def nightly_rebuilds(root: str, active: bool) -> list:
  """A schedule per demo dataset under root, each with its build_dataset parameters."""
  return [Cron(NIGHTLY, timezone="UTC", active=active, slug=f"nightly-{modality}", parameters={
              "spec": "jsonl", "output": os.path.join(root, "data", modality),
              "splits": [{"name": split, "input": os.path.join(root, "corpus",
                                                               f"{modality}-{split}.jsonl")}
                         for split in ("train", "test")],
              "options": demo.settings(os.path.join(root, "corpus"))})
          for modality in ("videos", "images", "audio")]


def deployments(root: str, nightly: bool = False) -> list:
  root = os.path.abspath(root)  # runs start in their own working directory
  common = {"name": "impax", "entrypoint_type": EntrypointType.MODULE_PATH}
  return [
      build_dataset.to_deployment(schedules=nightly_rebuilds(root, nightly),
                                  description="Build a dataset's splits (impax build), cached; "
                                              "nightly rebuild of the demo datasets.", **common),
      train.to_deployment(parameters={"config": demo.config_for(root),
                                      "workdir": os.path.join(root, "run")},
                          description="Train and evaluate (impax train).", **common),
      end_to_end.to_deployment(parameters={"root": root},
                               description="Demo corpus (or your corpora), builds, training, "
                                           "evaluation, report.", **common),
  ]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m impax.flows.serve", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", default="demo-output",
                      help="the demo's folder: defaults of train and end_to_end, and the "
                           "nightly rebuild's datasets (default: demo-output)")
  parser.add_argument("--nightly", action="store_true", help="turn the nightly rebuild on")
  args = parser.parse_args(argv)
  serve(*deployments(args.root, args.nightly), limit=1)


if __name__ == "__main__":
  main()
