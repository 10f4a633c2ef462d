"""`make demo`: the end_to_end flow on the demo corpus, with no Prefect server to set up.

    python -m impax.flows.demo demo-output [--steps N] [--workers N]

With no PREFECT_API_URL, Prefect starts its local ephemeral server for the run; the
runs, logs and artifacts stay in its database (PREFECT_HOME, ~/.prefect by default),
so `prefect server start` shows them afterwards. With PREFECT_API_URL set, the run
goes to that server.
"""

import argparse
import os
import sys
import time

from impax import demo


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m impax.flows.demo", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("root", metavar="DIR", nargs="?", default="demo-output")
  parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
  parser.add_argument("--workers", type=int, default=None, help="build workers (default: CPUs)")
  args = parser.parse_args(argv)
  # Offline, the server's telemetry only logs failures. Prefect reads its settings
  # when it is imported, so it (and the flow) are imported after this.
  os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
  # The first start of the ephemeral server creates its database; on a busy
  # 2-core machine that takes longer than Prefect's default 20 s wait.
  os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
  from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

  from impax.flows.end_to_end import end_to_end

  start = time.monotonic()
  state = end_to_end(root=args.root, steps=args.steps, workers=args.workers, return_state=True)
  run_id = state.state_details.flow_run_id
  ui = PREFECT_UI_URL.value() if PREFECT_API_URL.value() else "http://127.0.0.1:4200"
  where = (f"\nPrefect flow run {run_id} ({state.name}): its logs and artifacts (datasets, "
           f"training curves, evaluation, report) are at {ui}/runs/flow-run/{run_id}"
           + ("" if PREFECT_API_URL.value() else " once `prefect server start` runs"))
  if not state.is_completed():
    print(f"end_to_end failed: {state.message}{where}", file=sys.stderr)
    return 1
  result = state.result()
  return demo.print_summary(args.root, result["train"]["workdir"], result["train"]["eval"],
                            time.monotonic() - start, where)


if __name__ == "__main__":
  sys.exit(main())
