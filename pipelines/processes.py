"""The processes of an engine's cluster, supervised by the ids and start times they record.

Each process starts in a session of its own (its children die with it), writes its output
to STATE_DIR/ROLE.log, and is recorded in STATE_DIR/state.json with its id and its start
time: `status`, `kill` and `stop_all` find it there, from any process, and never signal one
that has since been given a recorded id. `wait` waits for a process to be ready, failing
with its log's end if it exits first.
"""

import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable

from impax.pipelines.engine_fetch import EngineError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
  with socket.socket() as s:
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def reachable(bind: str) -> str:
  """The address this machine reaches a process listening on `bind` at."""
  try:
    return LOOPBACK if ipaddress.ip_address(bind).is_unspecified else bind
  except ValueError:
    return bind  # a host name


def java() -> str:
  home = os.environ.get("JAVA_HOME")
  path = os.path.join(home, "bin", "java") if home else shutil.which("java")
  if not path or not os.path.exists(path):
    raise EngineError("Java 17 is needed to run Flink, Spark and Beam's job servers: "
                      "apt-get install openjdk-17-jre-headless, or set JAVA_HOME")
  return path


def classpath(*entries: str) -> str:
  """A Java classpath of folders (each one's jars) and single jars."""
  return ":".join(e if e.endswith(".jar") else os.path.join(e, "*") for e in entries)


def spawn(state: dict, role: str, argv: list[str], env: dict | None = None) -> None:
  """Starts one process in its own session (its children die with it) and records it."""
  log_path = os.path.join(state["dir"], f"{role}.log")
  with open(log_path, "ab") as log:
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=state["dir"], env={**os.environ, **(env or {})},
                            start_new_session=True)
  state["processes"][role] = {"pid": proc.pid, "started": _start_time(proc.pid), "log": log_path,
                               "argv": argv}
  write_state(state)


def _start_time(pid: int) -> str | None:
  """When the process started (in clock ticks since boot): with its id, it names one process,
  so a recorded id that the system has since given to another is not taken for ours."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _ours(process: dict) -> bool:
  return process.get("started") is None or _start_time(process["pid"]) == process["started"]


def alive(process: dict) -> bool:
  """Whether a recorded process still runs."""
  pid = process["pid"]
  if not _ours(process):
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  # A child of this process that exited stays a zombie until reaped.
  try:
    done, _ = os.waitpid(pid, os.WNOHANG)
    return done == 0
  except ChildProcessError:
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] == "Z"
  except OSError:
    return False


def write_state(state: dict) -> None:
  path = os.path.join(state["dir"], "state.json")
  with open(path + ".tmp", "w") as f:
    json.dump(state, f, indent=2)
  os.replace(path + ".tmp", path)


def read_state(directory: str) -> dict | None:
  try:
    with open(os.path.join(directory, "state.json")) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def wait(what: str, ready: Callable[[], bool], state: dict, role: str, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if ready():
      return
    if not alive(state["processes"][role]):
      raise EngineError(f"{what} exited while starting: {_tail(state, role)}")
    time.sleep(0.5)
  raise EngineError(f"{what} was not ready after {timeout:.0f} s: {_tail(state, role)}")


def _tail(state: dict, role: str, lines: int = 15) -> str:
  path = state["processes"][role]["log"]
  try:
    with open(path, errors="replace") as f:
      return f"the end of {path}:\n" + "".join(f.readlines()[-lines:])
  except OSError:
    return f"no log at {path}"


def listening(port: int, host: str = LOOPBACK) -> Callable[[], bool]:
  def ready():
    with socket.socket() as s:
      s.settimeout(0.5)
      return s.connect_ex((host, port)) == 0
  return ready


def serve(command: list[str], log_path: str, timeout: float = 60) -> tuple[subprocess.Popen, int]:
  """(process, port): a server started on a free loopback port ({port} in the command, its
  output to log_path), once it listens; the caller stops it. Raises EngineError naming the
  log when it exits or does not listen within `timeout` seconds."""
  port = free_port()
  with open(log_path, "wb") as log:
    server = subprocess.Popen([c.format(port=port) for c in command], stdout=log,
                              stderr=subprocess.STDOUT)
  ready, end = listening(port), time.monotonic() + timeout
  while not ready():
    if server.poll() is not None:
      raise EngineError(f"{' '.join(command[:3])} exited: see {log_path}")
    if time.monotonic() > end:
      server.terminate()
      server.wait()
      raise EngineError(f"{' '.join(command[:3])} did not listen on port {port}: see {log_path}")
    time.sleep(0.1)
  return server, port


def get_json(port: int, path: str, host: str = LOOPBACK):
  conn = http.client.HTTPConnection(host, port, timeout=3)
  try:
    conn.request("GET", path)
    response = conn.getresponse()
    return json.loads(response.read()) if response.status == 200 else None
  except (OSError, ValueError):
    return None
  finally:
    conn.close()


def status(state: dict) -> dict[str, bool]:
  """Each process's role: whether it is running."""
  return {role: alive(p) for role, p in state["processes"].items()}


def kill(state: dict, role: str, sig: int = signal.SIGKILL) -> None:
  """Signals one process of the cluster (and its children) by the id start recorded."""
  process = state["processes"][role]
  if not _ours(process):
    return  # gone, and its id is another process's now
  try:
    os.killpg(process["pid"], sig)
  except ProcessLookupError:
    pass


def stop_all(state: dict, timeout: float = 20) -> None:
  """Stops every process the state names: SIGTERM, then SIGKILL after `timeout` seconds."""
  roles = list(state["processes"])
  for role in reversed(roles):
    kill(state, role, signal.SIGTERM)
  deadline = time.monotonic() + timeout
  running = lambda role: alive(state["processes"][role])
  while any(running(r) for r in roles) and time.monotonic() < deadline:
    time.sleep(0.2)
  for role in roles:
    if running(role):
      kill(state, role, signal.SIGKILL)
  for role in roles:
    running(role)  # reaps a child
  # What Spark's worker staged for each job: copies of jars, not results or logs.
  shutil.rmtree(os.path.join(state["dir"], "work"), ignore_errors=True)

