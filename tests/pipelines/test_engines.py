"""Builds on real engines on loopback: a Flink session cluster and a Spark standalone cluster
(each through Beam's job server, with Python SDK workers in their own processes), Beam's
portable runner over its Python job service, and Prism. Each gives the DirectRunner's bytes.

Each cluster is started once for this module with `impax engine ENGINE start`, as a user
would, and stopped by the process ids it recorded. Each listens on loopback only: Beam's job
server and SDK worker pool run any code they are sent.
"""

import glob
import hashlib
import importlib.util
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from impax.pipelines import engine, engine_fetch, processes
from impax.pipelines.flink import start_taskmanager

SMALL = ["--video-short-side", "32", "--image-short-side", "32", "--video-fps", "5.0"]
HERE = os.path.dirname(os.path.abspath(__file__))


def _bad_input_module():
  spec = importlib.util.spec_from_file_location("impax_test_bad_input",
                                                os.path.join(HERE, "test_bad_input.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def impax(*argv, timeout=600, check=True):
  result = subprocess.run([sys.executable, "-m", "impax.cli", *argv], capture_output=True,
                          text=True, timeout=timeout)
  if check:
    assert result.returncode == 0, f"impax {' '.join(argv)}:\n{result.stdout}\n{result.stderr[-4000:]}"
  return result


def build(manifest, output, *beam_options, workers=2, check=True, timeout=600):
  return impax("build", "jsonl", "--input", str(manifest), "--output", str(output),
               *(("--workers", str(workers)) if workers else ()), "--num-shards", "3", *SMALL,
               "--", *beam_options, check=check, timeout=timeout)


def contents(output) -> dict:
  """What a build must reproduce: each file's sha256, and metadata.json less its clock."""
  out = {}
  for path in sorted(glob.glob(os.path.join(output, "*"))):
    name = os.path.basename(path)
    if name == "metadata.json":
      with open(path) as f:
        meta = json.load(f)
      meta.pop("created")
      for split in meta["splits"].values():
        split.pop("created"), split.pop("build_seconds")
      out[name] = meta
    else:
      with open(path, "rb") as f:
        out[name] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def corpora(corpus, tmp_path_factory, helpers):
  """The demo corpus's videos and the corpus of bad inputs, each built on the DirectRunner."""
  bad = _bad_input_module()
  media = bad.make_media(tmp_path_factory.mktemp("media"))
  out = {"videos": corpus["videos-train"], "bad": str(bad.write_manifest(media))}
  reference = tmp_path_factory.mktemp("direct")
  for name, manifest in out.items():
    build(manifest, reference / name)
  return out, reference


class Cluster:
  def __init__(self, name, directory, *options):
    self.name, self.dir = name, str(directory)
    started = impax("engine", name, "start", "--state-dir", self.dir, *options, timeout=400)
    self.options = started.stdout.strip().splitlines()[-1].split()
    self.state = engine.read_state(self.dir)

  def stop(self):
    stopped = impax("engine", self.name, "stop", "--state-dir", self.dir, check=False)
    pids = [p["pid"] for p in engine.read_state(self.dir)["processes"].values()]
    for pid in pids:  # whatever happened, nothing outlives the tests
      try:
        os.killpg(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    assert stopped.returncode == 0, stopped.stderr


def listening(leaders) -> list[tuple[str, str]]:
  """(address, command) of each TCP socket that a process listens on, of the sessions these
  process ids lead (each process `start` records leads one, which its children inherit)."""
  sessions = set(leaders)
  commands = {}
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        session = int(f.read().rsplit(")", 1)[1].split()[3])
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        command = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
      continue  # exited meanwhile
    if session in sessions:
      commands[int(pid)] = command
  ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
  return [(line.split()[3], commands[int(pid)][:120]) for line in ss.splitlines()
          for pid in re.findall(r"pid=(\d+)", line) if int(pid) in commands]


def on_loopback(address: str) -> bool:
  """Whether ss's local address (`*:PORT`, `0.0.0.0:PORT`, `[::ffff:127.0.0.1]:PORT`, ...)
  is reachable from this machine only."""
  host = address.rsplit(":", 1)[0].strip("[]").split("%")[0]
  if host == "*":
    return False
  ip = ipaddress.ip_address(host)
  return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def cluster_listening(cluster) -> list[tuple[str, str]]:
  return listening(p["pid"] for p in cluster.state["processes"].values())


def assert_listens_on_loopback_only(cluster):
  sockets = cluster_listening(cluster)
  # At least the job endpoint and the SDK worker pool.
  assert len(sockets) >= 2, sockets
  exposed = [s for s in sockets if not on_loopback(s[0])]
  assert not exposed, f"{cluster.name} listens beyond loopback: {exposed}"


@pytest.fixture(scope="module")
def flink(tmp_path_factory):
  cluster = Cluster("flink", tmp_path_factory.mktemp("flink"))
  yield cluster
  cluster.stop()


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
  cluster = Cluster("spark", tmp_path_factory.mktemp("spark"))
  yield cluster
  cluster.stop()


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
  cluster = Cluster("portable", tmp_path_factory.mktemp("portable"))
  yield cluster
  cluster.stop()


def test_fetch_again_keeps_what_was_fetched():
  """What make install runs on every install: a fetched engine is checked and kept."""
  for name in ("flink", "spark", "portable", "prism"):
    assert engine.fetched(name), f"make install fetches it: impax engine {name} fetch"
    fetched = impax("engine", name, "fetch")
    assert fetched.stdout.strip() == f"{name}: fetched in {engine.cache_dir()}"


def test_engine_start_runs_each_part_in_its_own_process(flink):
  assert flink.options[:2] == ["--runner=FlinkRunner", f"--flink_master=127.0.0.1:{flink.state['ports']['flink_rest']}"]
  assert "--environment_type=EXTERNAL" in flink.options
  roles = flink.state["processes"]
  assert set(roles) == {"jobmanager", "taskmanager", "job_server", "sdk_worker_pool"}
  assert len({p["pid"] for p in roles.values()}) == 4
  status = impax("engine", "flink", "status", "--state-dir", flink.dir)
  assert status.stdout.count("running") == 4 and "NOT RUNNING" not in status.stdout
  # A second start from the same state folder is refused while the first runs.
  again = impax("engine", "flink", "start", "--state-dir", flink.dir, check=False)
  assert again.returncode == 2 and "is still running" in again.stderr


def test_flink_listens_on_loopback_only(flink):
  assert_listens_on_loopback_only(flink)


def test_flink_builds_the_direct_runners_bytes(flink, corpora, tmp_path):
  manifests, reference = corpora
  a_jobs_sockets_are_on_loopback(flink, ["jsonl", "--input", manifests["videos"], "--output", str(tmp_path / "videos"),
                                         "--num-shards", "3", *SMALL, "--", *flink.options], tmp_path / "log")
  assert contents(tmp_path / "videos") == contents(reference / "videos")
  # Without --workers, the job runs on every slot of the cluster.
  rest = flink.state["ports"]["flink_rest"]
  job = max(processes.get_json(rest, "/jobs/overview")["jobs"], key=lambda j: j["start-time"])
  vertices = processes.get_json(rest, f"/jobs/{job['jid']}")["vertices"]
  assert {v["parallelism"] for v in vertices} == {flink.state["slots"]} == {2}
  # A cluster of one's own: `--master` starts only Beam's job server and the SDK workers for
  # it, here on another address that --bind names (all of 127.0.0.0/8 is this machine's).
  master = f"127.0.0.1:{flink.state['ports']['flink_rest']}"
  attached = Cluster("flink", tmp_path / "attached", "--master", master, "--bind", "127.0.0.2")
  try:
    assert set(attached.state["processes"]) == {"job_server", "sdk_worker_pool"}
    assert f"--flink_master={master}" in attached.options
    sockets = cluster_listening(attached)
    assert len(sockets) >= 3 and all(a.startswith(("127.0.0.2:", "[::ffff:127.0.0.2]:")) for a, _ in sockets), sockets
    assert f"--job_endpoint=127.0.0.2:{attached.state['ports']['job']}" in attached.options
    build(manifests["bad"], tmp_path / "bad", *attached.options)
  finally:
    attached.stop()
  assert contents(tmp_path / "bad") == contents(reference / "bad")
  assert contents(tmp_path / "bad")["metadata.json"]["splits"]["train"]["num_failed"] > 10
  # The jobs ran on the cluster, not in the launcher.
  jobs = processes.get_json(flink.state["ports"]["flink_rest"], "/jobs/overview")["jobs"]
  assert sum(j["state"] == "FINISHED" for j in jobs) >= 2


def a_jobs_sockets_are_on_loopback(cluster, argv, log_path):
  """Runs `impax build ARGV` on the cluster, watching every socket its processes listen on:
  while the job runs, the servers Beam's runner opens in the engine's Java processes for the
  SDK workers (control, data, state, logging, provisioning, artifacts) are on loopback too."""
  at_rest = set(cluster_listening(cluster))
  seen = build_watching_sockets(argv, log_path, also=[p["pid"] for p in cluster.state["processes"].values()])
  opened = [(address, command) for address, command in seen - at_rest
            if os.path.basename(command.split()[0]) == "java"]
  assert len(opened) >= 4, (at_rest, seen)  # what the check is for: the job's servers are seen
  exposed = [s for s in seen if not on_loopback(s[0])]
  assert not exposed, f"{cluster.name} listens beyond loopback while a job runs: {exposed}"


def _examples_done(output):
  """The lines of the build's result logs (pipelines/plan.py, Plan.result_log)."""
  logs = glob.glob(os.path.join(output, ".impax-tmp", "train", "examples", "*.results"))
  return sum(open(p, "rb").read().count(b"\n") for p in logs)


def test_a_killed_taskmanager_then_a_rerun_gives_the_same_bytes(flink, corpora, tmp_path, helpers):
  manifests, reference = corpora
  out = tmp_path / "videos"
  argv = [sys.executable, "-m", "impax.cli", "build", "jsonl", "--input", manifests["videos"],
          "--output", str(out), "--workers", "2", "--num-shards", "3", *SMALL, "--", *flink.options]
  proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
  deadline = time.monotonic() + 300
  while _examples_done(out) < 1:
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert time.monotonic() < deadline, "the build never started processing"
    time.sleep(0.02)
  processes.kill(flink.state, "taskmanager")  # kill -9, mid-build
  assert not os.path.exists(out / "metadata.json")
  start_taskmanager(flink.state)  # as a cluster manager would bring one back
  try:
    proc.wait(timeout=400)  # the job fails, or Flink recovers it: either way it ends
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  log = proc.stdout.read().decode()
  if proc.returncode:
    helpers.nothing_half_written(out)  # whatever is published is whole
    build(manifests["videos"], out, *flink.options)
  assert contents(out) == contents(reference / "videos"), log[-3000:]
  assert not os.path.exists(out / ".impax-tmp")


def test_spark_listens_on_loopback_only(spark):
  assert_listens_on_loopback_only(spark)


def test_spark_builds_the_direct_runners_bytes(spark, corpora, tmp_path):
  manifests, reference = corpora
  a_jobs_sockets_are_on_loopback(spark, ["jsonl", "--input", manifests["bad"], "--output", str(tmp_path / "bad"),
                                         "--workers", "2", "--num-shards", "3", *SMALL, "--", *spark.options],
                                 tmp_path / "log")
  assert contents(tmp_path / "bad") == contents(reference / "bad")
  assert set(spark.state["processes"]) == {"master", "worker", "job_server", "sdk_worker_pool"}
  spark.stop()  # and what the job staged in the worker's folder goes with the cluster
  assert not os.path.exists(os.path.join(spark.dir, "work"))


def test_portable_listens_on_loopback_only(portable, tmp_path):
  assert_listens_on_loopback_only(portable)
  # Beam's Python job service binds localhost whatever it is asked: no other address is taken.
  exposed = impax("engine", "portable", "start", "--state-dir", str(tmp_path), "--bind", "0.0.0.0",
                  check=False)
  assert exposed.returncode == 2 and "serves this machine only" in exposed.stderr


def test_portable_runner_over_its_job_service(portable, corpora, tmp_path):
  manifests, reference = corpora
  # A job service that is not there: a clear failure, and nothing left that blocks the next build.
  dead = f"--job_endpoint=127.0.0.1:{processes.free_port()}"
  failed = build(manifests["videos"], tmp_path / "videos", "--runner=PortableRunner", dead,
                 "--job_server_timeout=5", "--environment_type=EXTERNAL",
                 f"--environment_config=127.0.0.1:{processes.free_port()}", check=False, timeout=120)
  assert failed.returncode != 0
  for name, manifest in manifests.items():
    # While a job runs, the job service's servers for it (artifacts, its SDK workers'
    # control, data, state and logging) are on loopback too.
    seen = build_watching_sockets(
        ["jsonl", "--input", manifest, "--output", str(tmp_path / name), "--workers", "2",
         "--num-shards", "3", *SMALL, "--", *portable.options], tmp_path / f"{name}.log",
        also=[p["pid"] for p in portable.state["processes"].values()])
    assert len(seen) >= 6 and all(on_loopback(address) for address, _ in seen), seen
    assert contents(tmp_path / name) == contents(reference / name), name


def build_watching_sockets(argv, log_path, also=()) -> set[tuple[str, str]]:
  """Runs `impax build ARGV` in a session of its own; every socket it (or a process of the
  `also` sessions) listens on while it runs. Fails if the build fails."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", "impax.cli", "build", *argv], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
  seen = set()
  deadline = time.monotonic() + 600
  try:
    while proc.poll() is None and time.monotonic() < deadline:
      seen |= set(listening([proc.pid, *also]))
      time.sleep(0.2)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  assert proc.returncode == 0, log_path.read_text()[-4000:]
  return seen


def test_prism_builds_the_direct_runners_bytes(corpora, tmp_path):
  assert engine.fetched("prism"), "make install builds Prism: impax engine prism fetch"
  manifests, reference = corpora
  # The build starts its own Prism (in the build's session) and a worker pool in the launcher:
  # while it runs, every port of both is on loopback.
  seen = build_watching_sockets(
      ["jsonl", "--input", manifests["bad"], "--output", str(tmp_path / "bad"), "--workers", "2",
       "--num-shards", "3", *SMALL, "--", *engine.prism_options()], tmp_path / "log")
  assert any(command.startswith(engine_fetch.prism_binary()) for _, command in seen), seen
  assert all(on_loopback(address) for address, _ in seen), seen
  assert contents(tmp_path / "bad") == contents(reference / "bad")


def test_a_direct_runner_build_listens_on_loopback_only(corpora, tmp_path):
  """The DirectRunner's servers for its worker processes (control, data, state, logging)."""
  manifests, reference = corpora
  seen = build_watching_sockets(
      ["jsonl", "--input", manifests["videos"], "--output", str(tmp_path / "videos"),
       "--workers", "2", "--num-shards", "3", *SMALL, "--",
       "--direct_running_mode=multi_processing"],
      tmp_path / "log")
  assert len(seen) >= 4, seen
  assert all(on_loopback(address) for address, _ in seen), seen
  assert contents(tmp_path / "videos") == contents(reference / "videos")


def test_stop_never_signals_a_process_that_reused_a_recorded_id(tmp_path):
  state = {"dir": str(tmp_path), "processes": {}}
  processes.spawn(state, "sleeper", ["sleep", "60"])
  process = state["processes"]["sleeper"]
  assert processes.status(state) == {"sleeper": True}
  recorded = dict(process)
  process["started"] = "1"  # as if the system had given the id to another process since
  processes.stop_all(state)
  assert os.path.exists(f"/proc/{process['pid']}")  # left alone
  state["processes"]["sleeper"] = recorded
  processes.stop_all(state)
  assert processes.status(state) == {"sleeper": False}
