"""impax's deployments (flows/deployments.py, as in prefect.yaml), served from this
process: the one-machine shortcut, with no work pool or worker to set up.

    prefect server start --host 127.0.0.1                          # the UI and API, port 4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m impax.flows.serve --root demo-output

The deployments (build-videos, build-images, build-audio, build-dataset, train-demo,
evaluate-demo, end-to-end-demo) take their defaults on the demo under ROOT; their
parameters form in the UI is generated from the flows' typed parameters, and a run
with bad values is refused. The demo builds carry the nightly schedule (02:00 UTC),
off unless `--nightly` is given (or it is turned on in the UI); a build with new data
starts train-demo. One run at a time: builds and training each use every core.
"""

import argparse
import os

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from impax.flows import deployments as deployments_lib


def deployments(root: str, nightly: bool = False) -> list:
  """The table's deployments as served ones, their defaults on root (made absolute:
  runs start in their own working directory)."""
  served = []
  for d in deployments_lib.table(os.path.abspath(root), deployments_lib.CONFIGS):
    served.append(d.flow.to_deployment(
        name=d.name, description=d.description, tags=list(d.tags), parameters=d.parameters,
        schedules=[Cron(deployments_lib.NIGHTLY, timezone="UTC", active=nightly)]
        if d.nightly else None,
        triggers=[DeploymentEventTrigger(**t) for t in d.triggers],
        concurrency_limit=d.concurrency_limit, entrypoint_type=EntrypointType.MODULE_PATH))
  return served


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m impax.flows.serve", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", default="demo-output",
                      help="the demo's folder: the deployments' defaults (default: demo-output)")
  parser.add_argument("--nightly", action="store_true", help="turn the nightly builds on")
  args = parser.parse_args(argv)
  serve(*deployments(args.root, args.nightly), limit=1)


if __name__ == "__main__":
  main()
