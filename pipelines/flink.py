"""A Flink session cluster on this machine: a JobManager and one TaskManager, configured here.

`start` writes the cluster's config.yaml (ports, bind and advertised addresses, slots, memory,
heartbeats) into the state folder and runs each Flink process as Flink's own start scripts
would, then Beam's Flink job server and the SDK worker pool (beam_services.py). With
`master`, a Flink cluster already running, only Beam's job server and the pool start.
"""

import os
import subprocess

from impax.pipelines import beam_services, engine_fetch, processes
from impax.pipelines.engine_fetch import EngineError

FLINK_LOG4J = """rootLogger.level = INFO
rootLogger.appenderRef.file.ref = MainAppender
appender.main.name = MainAppender
appender.main.type = File
appender.main.append = true
appender.main.fileName = ${sys:log.file}
appender.main.layout.type = PatternLayout
appender.main.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
logger.pekko.name = org.apache.pekko
logger.pekko.level = WARN
"""


def start(state: dict, slots: int, timeout: float, master: str | None) -> list[str]:
  """Starts the cluster (unless `master` names one) and Beam's services for it; returns the
  Beam options of a build on it."""
  engine = engine_fetch.ENGINES["flink"]
  state["home"] = engine_fetch.home(engine)
  ports = state["ports"]
  if master is None:
    ports["flink_rpc"], ports["flink_rest"] = processes.free_port(), processes.free_port()
    state["slots"] = slots
    state["conf"] = _conf(state, slots)
    _process(state, "jobmanager", "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
             "GET_JM_RESOURCE_PARAMS", ["--executionMode", "cluster"])
    processes.wait("Flink's JobManager",
                   lambda: processes.get_json(ports["flink_rest"], "/overview", state["host"]) is not None,
                   state, "jobmanager", timeout)
    start_taskmanager(state, timeout)
    master = f"{state['host']}:{ports['flink_rest']}"
  # Beam's runner brings no logging backend: Flink's log4j jars give it one.
  lib = os.path.join(state["home"], "lib")
  log4j = tuple(os.path.join(lib, n) for n in sorted(os.listdir(lib)) if n.startswith("log4j-"))
  # On the cluster started here the job server reads its config.yaml too: a job without
  # --parallelism then runs on every slot (parallelism.default), not on one.
  conf = (f"--flink-conf-dir={state['conf']}",) if "conf" in state else ()
  beam_services.start_job_server(state, engine, (f"--flink-master={master}", *conf), log4j, timeout)
  beam_services.start_sdk_worker_pool(state, timeout)
  state["ui"] = f"http://{master}"
  return ["--runner=FlinkRunner", f"--flink_master={master}"]


def start_taskmanager(state: dict, timeout: float = 120) -> None:
  """Starts (or restarts) the Flink cluster's one TaskManager and waits until it is the only
  one the JobManager lists, with every slot free.

  A TaskManager that was killed stays listed until its heartbeat times out (10 s), and a job
  given its slots in that time would fail: so the wait lasts until it is gone.
  """
  before = {tm["id"] for tm in _taskmanagers(state)}
  # Its tasks run Beam's runner, which serves each job's SDK workers.
  agent = beam_services.loopback_agent(engine_fetch.ENGINES["flink"])
  _process(state, "taskmanager", "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
           "GET_TM_RESOURCE_PARAMS", [], (f"-javaagent:{agent}",))

  def ready():
    tms = _taskmanagers(state)
    return (len(tms) == 1 and tms[0]["id"] not in before
            and tms[0].get("freeSlots", 0) >= state["slots"])
  processes.wait("Flink's TaskManager", ready, state, "taskmanager", timeout)


def _taskmanagers(state: dict) -> list[dict]:
  overview = processes.get_json(state["ports"]["flink_rest"], "/taskmanagers", state["host"])
  return (overview or {}).get("taskmanagers", [])


def _conf(state: dict, slots: int) -> str:
  ports, bind, host = state["ports"], state["bind"], state["host"]
  # The bind hosts hold every port of the JobManager (rpc, blob, REST) and the TaskManager
  # (rpc, data); the others are the addresses each advertises.
  conf = {
      "jobmanager.rpc.address": host, "jobmanager.bind-host": bind,
      "jobmanager.rpc.port": ports["flink_rpc"],
      "rest.address": host, "rest.bind-address": bind, "rest.port": ports["flink_rest"],
      "taskmanager.host": host, "taskmanager.bind-host": bind,
      # A build without --workers (so without --parallelism) uses every slot.
      "taskmanager.numberOfTaskSlots": slots, "parallelism.default": slots,
      "jobmanager.memory.process.size": "1024m", "taskmanager.memory.process.size": "1536m",
      # The default network memory (a fraction of 1.5 GB) holds too few buffers for a
      # build's shuffles at 2 slots.
      "taskmanager.memory.network.min": "128m", "taskmanager.memory.network.max": "128m",
      "taskmanager.network.sort-shuffle.min-buffers": 64,
      # A killed TaskManager is noticed in seconds, not the default 50.
      "heartbeat.interval": 2000, "heartbeat.timeout": 10000,
      "io.tmp.dirs": os.path.join(state["dir"], "tmp"),
      "web.tmpdir": os.path.join(state["dir"], "tmp"),
  }
  conf_dir = os.path.join(state["dir"], "conf")
  os.makedirs(conf_dir, exist_ok=True)
  os.makedirs(conf["io.tmp.dirs"], exist_ok=True)
  with open(os.path.join(conf_dir, "config.yaml"), "w") as f:
    f.writelines(f"{k}: {v}\n" for k, v in conf.items())
  with open(os.path.join(conf_dir, "log4j.properties"), "w") as f:
    f.write(FLINK_LOG4J)
  return conf_dir


def _resources(home: str, conf_dir: str, which: str) -> tuple[list[str], list[str]]:
  """What Flink's start scripts ask BashJavaUtils: the JVM's memory flags and the -D settings
  that go with them, computed from config.yaml."""
  result = subprocess.run([processes.java(), "-cp",
                           processes.classpath(os.path.join(home, "bin"), os.path.join(home, "lib")),
                           "org.apache.flink.runtime.util.bash.BashJavaUtils", which,
                           "--configDir", conf_dir], capture_output=True, text=True, timeout=120)
  lines = [l.split(":", 1)[1] for l in result.stdout.splitlines()
           if l.startswith("BASH_JAVA_UTILS_EXEC_RESULT:")]
  if result.returncode or len(lines) < 2:
    raise EngineError(f"Flink's BashJavaUtils {which} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
  return lines[-2].split(), lines[-1].split()


def _process(state: dict, role: str, main_class: str, which: str, extra: list[str],
             agent: tuple[str, ...] = ()) -> None:
  home, conf_dir = state["home"], state["conf"]
  jvm, dynamic = _resources(home, conf_dir, which)
  processes.spawn(state, role, [
      processes.java(), *jvm, *agent, f"-Dlog.file={os.path.join(state['dir'], role + '.flink.log')}",
      f"-Dlog4j.configurationFile=file:{os.path.join(conf_dir, 'log4j.properties')}",
      "-cp", processes.classpath(os.path.join(home, "lib")), main_class, "--configDir", conf_dir,
      *extra, *dynamic])
