"""Engine clusters on loopback for distributed builds: Flink, Spark, or Beam's own job service.

`impax engine flink start` brings up what a user's cluster would run, each in its own
process: the engine (Flink's JobManager and a TaskManager; Spark's master and a worker),
Beam's job server for it, and a pool of Python SDK workers (the SDK harness, which runs
impax's DoFns). Its last line of output is the Beam options that send `impax build ...
-- OPTIONS` there. `status` and `stop` find the processes by the ids `start` wrote to
STATE_DIR/state.json.

Every port they listen on is bound to 127.0.0.1 unless `start` is given another address:
Beam's job server and SDK worker pool run whatever pipeline or worker they are sent, to
anyone who reaches them, so on another address they hand that machine's code execution to
its network. The servers Beam's runner opens for the SDK workers while a job runs (in Flink's
TaskManager, Spark's executors) are on loopback whatever the address: see
beam_services.LOOPBACK_AGENT.

This module is what `impax engine` (impax/cli.py) calls. The parts, each with one job:
  - engine_fetch.py: what each engine runs, fetched once into the cache and checked;
  - processes.py: the cluster's processes, recorded in state.json, watched and stopped;
  - flink.py, spark.py: each engine's cluster, configured and started;
  - beam_services.py: Beam's job server, SDK worker pool and Python job service.
"""

import os
import shutil
import sys
import time

from impax.pipelines import beam_services, engine_fetch, flink, processes, spark
from impax.pipelines.engine_fetch import EngineError, cache_dir, fetch, fetched, prism_options
from impax.pipelines.processes import LOOPBACK, read_state, status

__all__ = ["EngineError", "cache_dir", "fetch", "fetched", "prism_options", "read_state",
           "start", "state_dir", "status", "stop"]

STARTERS = {"flink": flink.start, "spark": spark.start, "portable": beam_services.start_portable}


def state_dir(name: str) -> str:
  """Where an engine's cluster keeps its state.json, config and logs unless told otherwise."""
  return os.path.join(cache_dir(), "run", name)


def start(name: str, directory: str | None = None, slots: int = 2, timeout: float = 180,
          master: str | None = None, bind: str = LOOPBACK) -> dict:
  """Starts an engine's cluster; returns its state, with the Beam options to pass after
  `impax build ... --` under "beam_options".

  master: an engine already running (Flink's HOST:REST_PORT, Spark's spark://HOST:PORT):
  only Beam's job server for it and the SDK worker pool are started.
  bind: the address every process listens on: anything but loopback lets whoever reaches it
  run code on this machine (Beam's job server and SDK worker pool have no authentication).
  """
  engine_fetch.lookup(name)
  if ":" in bind:
    raise EngineError(f"--bind {bind}: an IPv4 address or a host name (Beam's job server "
                      "writes its URLs as HOST:PORT)")
  directory = os.path.abspath(directory or state_dir(name))
  if (old := read_state(directory)) and any(processes.alive(p) for p in old["processes"].values()):
    raise EngineError(f"a {name} cluster started from {directory} is still running: "
                      f"`impax engine {name} stop` first (or --state-dir for another one)")
  if not fetched(name):
    fetch(name, log=lambda m: print(m, file=sys.stderr))
  shutil.rmtree(directory, ignore_errors=True)
  os.makedirs(directory)
  state = {"engine": name, "dir": directory, "bind": bind, "host": processes.reachable(bind),
           "ports": {}, "processes": {}, "started": time.time()}
  try:
    options = STARTERS[name](state, slots, timeout, master)
  except BaseException:
    processes.stop_all(state)  # a failed start leaves nothing running
    raise
  state["beam_options"] = options + [
      f"--job_endpoint={state['host']}:{state['ports']['job']}", "--environment_type=EXTERNAL",
      f"--environment_config={state['host']}:{state['ports']['sdk_worker_pool']}"]
  processes.write_state(state)
  return state


def stop(name: str, directory: str | None = None) -> dict | None:
  """Stops every process of the cluster started from `directory` (default: state_dir(name)):
  SIGTERM, then SIGKILL for those still running after 20 s. Returns its state, or None if
  none was recorded there."""
  state = read_state(os.path.abspath(directory or state_dir(engine_fetch.lookup(name).name)))
  if state is not None:
    processes.stop_all(state)
  return state
