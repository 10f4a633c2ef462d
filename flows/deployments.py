"""impax's deployments, defined once: prefect.yaml is written from this table, and
`python -m impax.flows.serve` serves the same table.

    python -m impax.flows.deployments > prefect.yaml     # after changing the table
    prefect work-pool create impax --type process
    prefect work-pool set-concurrency-limit impax 1
    prefect deploy --all                                 # from the repository root
    prefect worker start --pool impax                    # on any machine that has impax

`prefect deploy` runs the flows in the folder it ran in (its default pull step), so
the relative defaults below (demo-output, train/configs) are the repository's, as
`make demo` writes them. tests/flows/test_deployments.py checks prefect.yaml against
this table.

The concurrency limits are the server's: the work pool's (one run at a time on it:
builds and training each use every core of the machine) and each deployment's.
"""

import dataclasses
import os
import sys

import prefect
import yaml
from prefect import Flow

import impax.train
from impax.flows.build import BUILT, build_dataset
from impax.flows.demo import DEMO_DATASETS, build_demo_dataset, end_to_end_demo
from impax.flows.train import evaluate_checkpoint, train

POOL = "impax"
NIGHTLY = "0 2 * * *"  # 02:00 UTC; off until turned on (in the UI or `--nightly`)
CONFIGS = os.path.join(os.path.dirname(impax.train.__file__), "configs")

# Training on new demo data: build_demo_dataset emits BUILT, with the training's
# config and workdir in its payload, only when it built a split (not from the cache).
# Reactive, once an hour at most: the three nightly builds start one training, not
# three. It starts on the first new build and waits in the pool's queue (limit 1,
# runs in the order they were scheduled) behind the builds scheduled before it, so it
# reads all of that night's data; its workdir, ROOT/runs/{data}, is named by that data.
TRAIN_ON_NEW_DATA = {
    "type": "event", "enabled": True, "name": "train on new demo data",
    "description": "A demo dataset was built with new data (not served from the cache); "
                   "once an hour at most.",
    "match": {"prefect.resource.id": "impax.demo.*"}, "expect": [BUILT],
    "posture": "Reactive", "threshold": 1, "within": 3600,
    "parameters": {"config": "{{ event.payload.config }}",
                   "workdir": "{{ event.payload.workdir }}"},
}


@dataclasses.dataclass(frozen=True)
class Deployment:
  """A deployment of one flow: what the UI lists and a worker (or serve) runs."""
  name: str
  flow: Flow
  description: str
  tags: tuple[str, ...]
  parameters: dict = dataclasses.field(default_factory=dict)
  nightly: bool = False  # the nightly schedule, inactive by default
  triggers: tuple[dict, ...] = ()
  concurrency_limit: int = 1

  @property
  def entrypoint(self) -> str:
    return f"{self.flow.fn.__module__}.{self.flow.fn.__name__}"


def table(root: str = "demo-output", configs: str = "train/configs") -> list[Deployment]:
  """The deployments, their defaults on the demo under root."""
  config = f"{configs}/demo.py:{root}/data"
  workdir = f"{root}/run"
  return [
      *(Deployment(f"build-{dataset}", build_demo_dataset,
                   f"Build the demo's {dataset} dataset ({root}/data/{dataset}) from its corpus "
                   f"in {root}/corpus, cached: an unchanged corpus is not built again. New "
                   "data starts train-demo. Nightly at 02:00 UTC once its schedule is on.",
                   ("build", f"dataset:{dataset}", "spec:jsonl"),
                   {"root": root, "dataset": dataset}, nightly=True)
        for dataset in DEMO_DATASETS),
      Deployment("build-dataset", build_dataset,
                 "Build any dataset's splits into ArrayRecord shards (impax build), cached.",
                 ("build",)),
      Deployment("train-demo", train,
                 f"Train and evaluate the demo's model on {root}/data (impax train); started "
                 "by a demo build that produced new data.",
                 ("train", "config:demo"), {"config": config, "workdir": workdir},
                 triggers=(TRAIN_ON_NEW_DATA,)),
      Deployment("evaluate-demo", evaluate_checkpoint,
                 f"Evaluate the latest checkpoint of {workdir} on the held-out splits "
                 "(impax eval).", ("evaluate", "config:demo"),
                 {"config": config, "workdir": workdir}),
      Deployment("end-to-end-demo", end_to_end_demo,
                 f"The demo end to end in {root}: its corpus, every build, training, "
                 "evaluation and a report (make demo).", ("end-to-end", "demo"),
                 {"root": root}),
  ]


def prefect_yaml(deployments: list[Deployment] | None = None) -> str:
  """prefect.yaml's text for the deployments (default: table())."""
  entries = []
  for d in deployments or table():
    entry = {"name": d.name, "entrypoint": d.entrypoint, "description": d.description,
             "tags": list(d.tags), "parameters": d.parameters,
             "work_pool": {"name": POOL}, "concurrency_limit": d.concurrency_limit,
             "schedules": [{"cron": NIGHTLY, "timezone": "UTC", "active": False}]
             if d.nightly else []}
    if d.triggers:
      entry["triggers"] = [dict(t) for t in d.triggers]
    entries.append(entry)
  header = ("# Written by `python -m impax.flows.deployments > prefect.yaml` from "
            "flows/deployments.py: edit that.\n"
            f"#   prefect work-pool create {POOL} --type process\n"
            f"#   prefect work-pool set-concurrency-limit {POOL} 1\n"
            "#   prefect deploy --all\n"
            f"#   prefect worker start --pool {POOL}\n")
  body = {"name": "impax", "prefect-version": prefect.__version__, "deployments": entries}
  return header + yaml.safe_dump(body, sort_keys=False, width=100)


if __name__ == "__main__":
  sys.stdout.write(prefect_yaml())
