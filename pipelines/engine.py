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
TaskManager, Spark's executors) are on loopback whatever the address: see LOOPBACK_AGENT.

What runs, fetched once into the cache (IMPAX_ENGINE_CACHE, default ~/.cache/impax/engines)
by `impax engine fetch` (make install runs it), every file checked against ENGINE_JARS:
  - Flink 1.19.3: the distribution's jars, from PyPI's apache-flink-libraries sdist;
  - Spark 3.5.9: the distribution's jars, from PyPI's pyspark sdist;
  - Beam's Flink and Spark job servers from Maven Central, with their dependencies.
    Maven Central serves no Beam 2.77.0 Java artifact, and no job-server jar at any
    version: the job servers are Beam Java 2.62.0's runner modules (their driver class
    on a classpath), the newest with a job service, driving the Python 2.77.0 SDK over
    Beam's portability protocol.
"""

import dataclasses
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable

BEAM_JAVA = "2.62.0"
ENGINE_JARS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_jars.sha256")


class EngineError(Exception):
  """An engine cannot be fetched, started or reached; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Distribution:
  """An engine's jars, inside a PyPI sdist (the package's own wheel would install Python code)."""
  package: str
  version: str
  sha256: str
  home: str  # the folder inside the sdist that is the engine's home
  keep: tuple[str, ...]  # what of it the engine runs


@dataclasses.dataclass(frozen=True)
class Engine:
  name: str
  distribution: Distribution | None
  job_server: str | None  # the Maven artifact of Beam's runner (org.apache.beam:ARTIFACT)
  job_invoker: str | None  # its JobInvoker class, which BOUND_JOB_SERVER serves


ENGINES = {
    "flink": Engine("flink", Distribution("apache-flink-libraries", "1.19.3",
                                          "4a58e3a1fb7d83340bc96b6c080624c6d792d69fae5d294b96224775204a9c60",
                                          "apache-flink-libraries-1.19.3/deps", ("bin", "lib")),
                    "beam-runners-flink-1.19", "org.apache.beam.runners.flink.FlinkJobInvoker"),
    "spark": Engine("spark", Distribution("pyspark", "3.5.9",
                                          "ea27adc39ddac9413b8951e45aa748cbed6c785971b81386efc41938f6243d93",
                                          "pyspark-3.5.9/deps", ("jars",)),
                    "beam-runners-spark-3", "org.apache.beam.runners.spark.SparkJobInvoker"),
    # Beam's Python job service (the FnApiRunner behind the portability protocol): nothing to fetch.
    "portable": Engine("portable", None, None, None),
}

# Prism, Beam's portable runner in Go: built from its module at the pinned Beam version.
# The PrismRunner starts it for each job; there is no cluster to keep running.
BEAM_GO_MODULE = "github.com/apache/beam/sdks/v2"
PRISM_MODULE = f"{BEAM_GO_MODULE}/go/cmd/prism"
PRISM_VERSION = "v2.77.0"
# Prism binds its job port, which its SDK workers share, to every interface, and has no flag
# for the address: impax builds it with this line of the module bound to loopback instead.
PRISM_SERVER = "go/pkg/beam/runners/prism/internal/jobservices/server.go"
PRISM_LISTEN = ('net.Listen("tcp", fmt.Sprintf(":%d", port))',
                'net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))')
PRISM_GO_MOD = """module impax/prism

go {go}

require {module} {version}

replace {module} => ./beam
"""


def cache_dir() -> str:
  return os.environ.get("IMPAX_ENGINE_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "impax", "engines")


def state_dir(engine: str) -> str:
  return os.path.join(cache_dir(), "run", engine)


def _engine(name: str) -> Engine:
  if name not in ENGINES:
    raise EngineError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")
  return ENGINES[name]


# -- fetch ----------------------------------------------------------------------------

def _home(engine: Engine) -> str:
  return os.path.join(cache_dir(), f"{engine.name}-{engine.distribution.version}")


def _job_server_dir(engine: Engine) -> str:
  return os.path.join(cache_dir(), f"beam-{engine.name}-job-server-{BEAM_JAVA}")


def _pinned() -> dict[str, dict[str, str]]:
  """ENGINE_JARS: for each fetched folder, every file's sha256 (`sha256  folder/name`)."""
  out = {}
  with open(ENGINE_JARS) as f:
    for line in f:
      if line.strip() and not line.startswith("#"):
        digest, path = line.split()
        folder, name = path.split("/", 1)
        out.setdefault(folder, {})[name] = digest
  return out


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _check(folder: str, files: dict[str, str], key: str) -> None:
  pinned = _pinned().get(key)
  if pinned is None:
    raise EngineError(f"{ENGINE_JARS} lists no files for {key}")
  if set(files) != set(pinned):
    extra, missing = sorted(set(files) - set(pinned)), sorted(set(pinned) - set(files))
    raise EngineError(f"{folder}: the fetched files differ from {ENGINE_JARS} "
                      f"(not pinned: {extra[:5]}, missing: {missing[:5]})")
  for name, digest in pinned.items():
    if files[name] != digest:
      raise EngineError(f"{folder}/{name}: sha256 {files[name]} is not the pinned {digest}")


def _jar_digests(folder: str) -> dict[str, str]:
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      if name.endswith(".jar"):
        path = os.path.join(root, name)
        out[os.path.relpath(path, folder)] = _sha256(path)
  return out


def _publish(tmp: str, final: str) -> None:
  """A fetched folder appears whole or not at all."""
  if os.path.isdir(final):
    shutil.rmtree(tmp)
  else:
    os.replace(tmp, final)


def _fetch_distribution(engine: Engine, log: Callable[[str], None]) -> str:
  home = _home(engine)
  if os.path.isdir(home):
    return home
  dist = engine.distribution
  os.makedirs(cache_dir(), exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
    log(f"fetching {dist.package}=={dist.version} from PyPI (its jars are {engine.name}'s)")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    ":all:", "-d", tmp, f"{dist.package}=={dist.version}"], check=True)
    (sdist,) = [os.path.join(tmp, n) for n in os.listdir(tmp)]
    if (digest := _sha256(sdist)) != dist.sha256:
      raise EngineError(f"{os.path.basename(sdist)}: sha256 {digest} is not the pinned {dist.sha256}")
    keep = tuple(f"{dist.home}/{k}/" for k in dist.keep)
    with tarfile.open(sdist) as tar:
      members = [m for m in tar.getmembers() if m.name.startswith(keep) and (m.isfile() or m.isdir())]
      tar.extractall(tmp, members=members, filter="data")
    extracted = os.path.join(tmp, dist.home)
    _check(home, _jar_digests(extracted), os.path.basename(home))
    _publish(extracted, home)
  return home


POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>impax</groupId><artifactId>{artifact}-deps</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies><dependency>
    <groupId>org.apache.beam</groupId><artifactId>{artifact}</artifactId><version>{version}</version>
  </dependency></dependencies>
</project>
"""


def _fetch_job_server(engine: Engine, log: Callable[[str], None]) -> str:
  folder = _job_server_dir(engine)
  if os.path.isdir(folder):
    return folder
  if not shutil.which("mvn"):
    raise EngineError("Maven (mvn) is needed to fetch Beam's job server: apt-get install maven")
  os.makedirs(cache_dir(), exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
    log(f"fetching org.apache.beam:{engine.job_server}:{BEAM_JAVA} and its dependencies from Maven Central")
    with open(os.path.join(tmp, "pom.xml"), "w") as f:
      f.write(POM.format(artifact=engine.job_server, version=BEAM_JAVA))
    # -C: a download whose checksum does not match the repository's fails the fetch.
    result = subprocess.run(["mvn", "-B", "-q", "-C", "dependency:copy-dependencies",
                             "-DoutputDirectory=lib"], cwd=tmp, capture_output=True, text=True)
    if result.returncode:
      raise EngineError(f"Maven could not fetch {engine.job_server}:{BEAM_JAVA}:\n"
                        f"{result.stdout[-3000:]}{result.stderr[-2000:]}")
    lib = os.path.join(tmp, "lib")
    _check(folder, _jar_digests(lib), os.path.basename(folder))
    os.makedirs(os.path.join(tmp, "out"))
    os.replace(lib, os.path.join(tmp, "out", "lib"))
    _publish(os.path.join(tmp, "out"), folder)
  return folder


def prism_binary() -> str:
  return os.path.join(cache_dir(), f"prism-{PRISM_VERSION}-loopback", "prism")


def prism_options() -> list[str]:
  """The Beam options of a build on Prism."""
  return ["--runner=PrismRunner", f"--prism_location={prism_binary()}"]


def _fetch_prism(log: Callable[[str], None]) -> None:
  if os.path.exists(prism_binary()):
    return
  if not shutil.which("go"):
    raise EngineError("Go is needed to build Prism (go build): https://go.dev/doc/install")
  log(f"building {PRISM_MODULE}@{PRISM_VERSION}, its job port on loopback (minutes, the first time)")
  os.makedirs(cache_dir(), exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
    def go(*argv: str) -> str:
      result = subprocess.run(["go", *argv], cwd=tmp, capture_output=True, text=True)
      if result.returncode:
        raise EngineError(f"go {' '.join(argv)} failed:\n{result.stderr[-3000:]}")
      return result.stdout

    # The module proxy checks every module against the Go checksum database (go.sum).
    module = json.loads(go("mod", "download", "-json", f"{BEAM_GO_MODULE}@{PRISM_VERSION}"))["Dir"]
    beam = os.path.join(tmp, "beam")
    # copyfile: writable copies of the module cache's read-only files.
    shutil.copytree(os.path.join(module, "go"), os.path.join(beam, "go"), copy_function=shutil.copyfile)
    for name in ("go.mod", "go.sum"):
      shutil.copyfile(os.path.join(module, name), os.path.join(beam, name))
    server = os.path.join(beam, PRISM_SERVER)
    with open(server) as f:
      source = f.read()
    if source.count(PRISM_LISTEN[0]) != 1:
      raise EngineError(f"{PRISM_SERVER} of {BEAM_GO_MODULE}@{PRISM_VERSION} has no `{PRISM_LISTEN[0]}`")
    with open(server, "w") as f:
      f.write(source.replace(*PRISM_LISTEN))
    with open(os.path.join(beam, "go.mod")) as f:
      go_version = next(l.split()[1] for l in f if l.startswith("go "))
    with open(os.path.join(tmp, "go.mod"), "w") as f:
      f.write(PRISM_GO_MOD.format(go=go_version, module=BEAM_GO_MODULE, version=PRISM_VERSION))
    shutil.copyfile(os.path.join(beam, "go.sum"), os.path.join(tmp, "go.sum"))
    # -mod=mod: Beam's own requirements, each checked against its go.sum.
    go("build", "-mod=mod", "-o", os.path.join(tmp, "prism"), PRISM_MODULE)
    os.makedirs(os.path.dirname(prism_binary()), exist_ok=True)
    os.replace(os.path.join(tmp, "prism"), prism_binary())


def fetch(name: str, log: Callable[[str], None] = print) -> None:
  """Fetches an engine's jars (or builds Prism) into the cache once; a fetched one is kept."""
  if name == "prism":
    return _fetch_prism(log)
  engine = _engine(name)
  if engine.distribution:
    _fetch_distribution(engine, log)
  if engine.job_server:
    _fetch_job_server(engine, log)


def fetched(name: str) -> bool:
  if name == "prism":
    return os.path.exists(prism_binary())
  engine = _engine(name)
  return ((not engine.distribution or os.path.isdir(_home(engine)))
          and (not engine.job_server or os.path.isdir(_job_server_dir(engine))))


# -- processes ------------------------------------------------------------------------

LOOPBACK = "127.0.0.1"


def free_port() -> int:
  with socket.socket() as s:
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def _reachable(bind: str) -> str:
  """The address this machine reaches a process listening on `bind` at."""
  try:
    return LOOPBACK if ipaddress.ip_address(bind).is_unspecified else bind
  except ValueError:
    return bind  # a host name


def _java() -> str:
  home = os.environ.get("JAVA_HOME")
  java = os.path.join(home, "bin", "java") if home else shutil.which("java")
  if not java or not os.path.exists(java):
    raise EngineError("Java 17 is needed to run Flink, Spark and Beam's job servers: "
                      "apt-get install openjdk-17-jre-headless, or set JAVA_HOME")
  return java


def _classpath(*entries: str) -> str:
  """A Java classpath of folders (each one's jars) and single jars."""
  return ":".join(e if e.endswith(".jar") else os.path.join(e, "*") for e in entries)


def _spawn(state: dict, role: str, argv: list[str], env: dict | None = None) -> None:
  """Starts one process in its own session (its children die with it) and records it."""
  log_path = os.path.join(state["dir"], f"{role}.log")
  with open(log_path, "ab") as log:
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=state["dir"], env={**os.environ, **(env or {})},
                            start_new_session=True)
  state["processes"][role] = {"pid": proc.pid, "started": _start_time(proc.pid), "log": log_path,
                               "argv": argv}
  _write_state(state)


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


def _alive(process: dict) -> bool:
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


def _write_state(state: dict) -> None:
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


def _wait(what: str, ready: Callable[[], bool], state: dict, role: str, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if ready():
      return
    if not _alive(state["processes"][role]):
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


def _listening(port: int, host: str = LOOPBACK) -> Callable[[], bool]:
  def ready():
    with socket.socket() as s:
      s.settimeout(0.5)
      return s.connect_ex((host, port)) == 0
  return ready


def _get_json(port: int, path: str, host: str = LOOPBACK):
  conn = http.client.HTTPConnection(host, port, timeout=3)
  try:
    conn.request("GET", path)
    response = conn.getresponse()
    return json.loads(response.read()) if response.status == 200 else None
  except (OSError, ValueError):
    return None
  finally:
    conn.close()


def _sdk_worker_pool(state: dict, timeout: float) -> None:
  """Beam's external worker pool (served by worker_pool.py on the bind address): it starts
  a Python SDK worker process for each request.

  Its workers run this interpreter, so this environment's bin comes first on PATH (else
  they die on `import apache_beam`).
  """
  port = state["ports"]["sdk_worker_pool"] = free_port()
  env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
  _spawn(state, "sdk_worker_pool", [sys.executable, "-m", "impax.pipelines.worker_pool",
                                    "--host", state["bind"], "--port", str(port)], env)
  _wait("Beam's SDK worker pool", _listening(port, state["host"]), state, "sdk_worker_pool", timeout)


# The job server's log, to its process's output (its log file): warnings and errors, and
# each job's state changes.
JOB_SERVER_LOG4J = """rootLogger.level = WARN
rootLogger.appenderRef.out.ref = Out
appender.out.name = Out
appender.out.type = Console
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %d{HH:mm:ss,SSS} %-5p %c - %m%n
logger.jobs.name = org.apache.beam.runners.jobsubmission
logger.jobs.level = INFO
"""


# Beam's Flink and Spark drivers take --job-host, yet bind their job and artifact ports to
# every interface (their ServerFactory binds the port alone). This driver binds them to
# --job-host; Java runs it from source (`java FILE.java`: a JDK module Debian's JRE ships).
BOUND_JOB_SERVER = """import java.lang.reflect.Method;
import java.net.InetSocketAddress;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.apache.beam.model.pipeline.v1.Endpoints.ApiServiceDescriptor;
import org.apache.beam.runners.jobsubmission.JobInvoker;
import org.apache.beam.runners.jobsubmission.JobServerDriver;
import org.apache.beam.sdk.extensions.gcp.options.GcsOptions;
import org.apache.beam.sdk.fn.channel.SocketAddressFactory;
import org.apache.beam.sdk.fn.server.GrpcContextHeaderAccessorProvider;
import org.apache.beam.sdk.fn.server.ServerFactory;
import org.apache.beam.sdk.io.FileSystems;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.BindableService;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.Server;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.ServerInterceptors;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.netty.NettyServerBuilder;
import org.kohsuke.args4j.CmdLineParser;

/** java -cp CLASSPATH BoundJobServer.java INVOKER_CLASS [the flags of the invoker's driver] */
public class BoundJobServer extends JobServerDriver {
  private BoundJobServer(ServerConfiguration config, JobInvokerFactory invoker) {
    super(config, new BoundServerFactory(), new BoundServerFactory(), invoker);
  }

  public static void main(String[] args) throws Exception {
    // The invoker's create(CONFIGURATION) names the driver's configuration class, flags and all.
    Method create = Arrays.stream(Class.forName(args[0]).getMethods())
        .filter(m -> m.getName().equals("create") && m.getParameterCount() == 1)
        .findFirst().orElseThrow();
    ServerConfiguration config =
        (ServerConfiguration) create.getParameterTypes()[0].getConstructor().newInstance();
    new CmdLineParser(config).parseArgument(Arrays.copyOfRange(args, 1, args.length));
    // As Beam's drivers' main().
    PipelineOptions options = PipelineOptionsFactory.create();
    options.as(GcsOptions.class).setGcsUploadBufferSizeBytes(1024 * 1024);
    FileSystems.setDefaultPipelineOptions(options);
    new BoundJobServer(config, () -> {
      try {
        return (JobInvoker) create.invoke(null, config);
      } catch (ReflectiveOperationException e) {
        throw new IllegalStateException(e);
      }
    }).run();
  }

  /** Serves on the HOST:PORT the driver makes of --job-host and each port flag. */
  static class BoundServerFactory extends ServerFactory {
    @Override
    public Server create(List<BindableService> services, ApiServiceDescriptor descriptor)
        throws java.io.IOException {
      InetSocketAddress address = (InetSocketAddress) SocketAddressFactory.createFrom(descriptor.getUrl());
      // Beam's settings: message size bounded above this layer, its runners' keep-alive pings.
      NettyServerBuilder builder = NettyServerBuilder.forAddress(address)
          .maxInboundMessageSize(Integer.MAX_VALUE)
          .permitKeepAliveTime(20, TimeUnit.SECONDS);
      for (BindableService service : services) {
        builder.addService(
            ServerInterceptors.intercept(service, GrpcContextHeaderAccessorProvider.interceptor()));
      }
      return builder.build().start();
    }

    @Override
    public Server allocateAddressAndCreate(
        List<BindableService> services, ApiServiceDescriptor.Builder descriptor) {
      throw new UnsupportedOperationException("impax gives the job server every port");
    }
  }
}
"""


def _job_server(state: dict, engine: Engine, flags: tuple[str, ...], extra_classpath: tuple[str, ...],
                timeout: float, jvm: tuple[str, ...] = (), env: dict | None = None) -> None:
  ports = state["ports"]
  for name in ("job", "artifact", "expansion"):
    ports[name] = free_port()
  with open(os.path.join(state["dir"], "log4j2.properties"), "w") as f:
    f.write(JOB_SERVER_LOG4J)
  source = os.path.join(state["dir"], "BoundJobServer.java")
  with open(source, "w") as f:
    f.write(BOUND_JOB_SERVER)
  _spawn(state, "job_server", [
      _java(), *jvm, f"-javaagent:{loopback_agent(engine)}", "-Xmx1g", f"-Dlog4j2.configurationFile=file:{os.path.join(state['dir'], 'log4j2.properties')}",
      "-cp", _classpath(os.path.join(_job_server_dir(engine), "lib"), *extra_classpath),
      source, engine.job_invoker, *flags, f"--job-host={state['bind']}", f"--job-port={ports['job']}",
      f"--artifact-port={ports['artifact']}", f"--expansion-port={ports['expansion']}"], env)
  _wait(f"Beam's {engine.name} job server", _listening(ports["job"], state["host"]), state, "job_server",
        timeout)


# Beam's runner opens a job's servers for its SDK workers (control, data, state, logging,
# provisioning, artifacts) with ServerFactory's InetSocketAddressServerFactory, which binds
# every interface. The engines load it from each job's staged jars, through a loader of the
# job's (Flink's child-first one, a Spark executor's); a copy on the JVM's own classpath
# would be loaded apart from the Beam classes it calls. So the JVMs run the agent
# pipelines/java/LoopbackAgent.java, which gives every loader impax's copy of the class
# (pipelines/java/ServerFactory.java): it binds loopback, the address it tells the workers.
JAVA_SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java")
LOOPBACK_AGENT = ("LoopbackAgent.java", "ServerFactory.java")
LOOPBACK_CLASS = "org/apache/beam/sdk/fn/server/ServerFactory$InetSocketAddressServerFactory.class"


def loopback_agent(engine: Engine) -> str:
  """The agent's jar, compiled once into the cache against the engine's job server's jars."""
  sources = [os.path.join(JAVA_SOURCES, name) for name in LOOPBACK_AGENT]
  digest = hashlib.sha256(b"".join(open(s, "rb").read() for s in sources)).hexdigest()[:16]
  jar = os.path.join(cache_dir(), f"loopback-agent-{BEAM_JAVA}-{digest}.jar")
  if os.path.exists(jar):
    return jar
  lib = os.path.join(_job_server_dir(engine), "lib")
  jars = sorted(os.path.join(lib, n) for n in os.listdir(lib) if n.endswith(".jar"))
  with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
    # javac through its module: Debian's JRE ships it (`java FILE.java` needs it too), not the
    # javac command. --release 8, as Beam's classes, so the copy has their shape.
    result = subprocess.run([_java(), "-m", "jdk.compiler/com.sun.tools.javac.Main", "--release", "8",
                             "-Xlint:-options", "-cp", ":".join(jars), "-d", tmp, *sources],
                            capture_output=True, text=True)
    if result.returncode:
      raise EngineError(f"javac {' '.join(LOOPBACK_AGENT)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    with zipfile.ZipFile(os.path.join(lib, f"beam-sdks-java-core-{BEAM_JAVA}.jar")) as core:
      replaces = hashlib.sha256(core.read(LOOPBACK_CLASS)).hexdigest()
    with zipfile.ZipFile(os.path.join(tmp, "agent.jar"), "w") as out:
      out.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nPremain-Class: LoopbackAgent\n")
      for name in sorted(os.listdir(tmp)):
        if name.startswith("LoopbackAgent"):
          out.write(os.path.join(tmp, name), name)
      # Not at its class's path: the jar is on the JVM's classpath, whose loader would take it.
      out.write(os.path.join(tmp, LOOPBACK_CLASS), "loopback/InetSocketAddressServerFactory.class")
      out.writestr("loopback/replaces.sha256", replaces + "\n")
    os.replace(os.path.join(tmp, "agent.jar"), jar)
  return jar


# -- Flink ----------------------------------------------------------------------------

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


def _flink_conf(state: dict, slots: int) -> str:
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


def _flink_resources(home: str, conf_dir: str, which: str) -> tuple[list[str], list[str]]:
  """What Flink's start scripts ask BashJavaUtils: the JVM's memory flags and the -D settings
  that go with them, computed from config.yaml."""
  result = subprocess.run([_java(), "-cp", _classpath(os.path.join(home, "bin"), os.path.join(home, "lib")),
                           "org.apache.flink.runtime.util.bash.BashJavaUtils", which,
                           "--configDir", conf_dir], capture_output=True, text=True, timeout=120)
  lines = [l.split(":", 1)[1] for l in result.stdout.splitlines()
           if l.startswith("BASH_JAVA_UTILS_EXEC_RESULT:")]
  if result.returncode or len(lines) < 2:
    raise EngineError(f"Flink's BashJavaUtils {which} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
  return lines[-2].split(), lines[-1].split()


def _flink_process(state: dict, role: str, main_class: str, which: str, extra: list[str],
                   agent: tuple[str, ...] = ()) -> None:
  home, conf_dir = state["home"], state["conf"]
  jvm, dynamic = _flink_resources(home, conf_dir, which)
  _spawn(state, role, [
      _java(), *jvm, *agent, f"-Dlog.file={os.path.join(state['dir'], role + '.flink.log')}",
      f"-Dlog4j.configurationFile=file:{os.path.join(conf_dir, 'log4j.properties')}",
      "-cp", _classpath(os.path.join(home, "lib")), main_class, "--configDir", conf_dir, *extra, *dynamic])


def start_taskmanager(state: dict, timeout: float = 120) -> None:
  """Starts (or restarts) the Flink cluster's one TaskManager and waits until it is the only
  one the JobManager lists, with every slot free.

  A TaskManager that was killed stays listed until its heartbeat times out (10 s), and a job
  given its slots in that time would fail: so the wait lasts until it is gone.
  """
  before = {tm["id"] for tm in _flink_taskmanagers(state)}
  # Its tasks run Beam's runner, which serves each job's SDK workers.
  _flink_process(state, "taskmanager", "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
                 "GET_TM_RESOURCE_PARAMS", [], (f"-javaagent:{loopback_agent(ENGINES['flink'])}",))

  def ready():
    tms = _flink_taskmanagers(state)
    return (len(tms) == 1 and tms[0]["id"] not in before
            and tms[0].get("freeSlots", 0) >= state["slots"])
  _wait("Flink's TaskManager", ready, state, "taskmanager", timeout)


def _flink_taskmanagers(state: dict) -> list[dict]:
  return (_get_json(state["ports"]["flink_rest"], "/taskmanagers", state["host"]) or {}).get("taskmanagers", [])


def _start_flink(state: dict, slots: int, timeout: float, master: str | None) -> list[str]:
  engine = ENGINES["flink"]
  state["home"] = _home(engine)
  ports = state["ports"]
  if master is None:
    ports["flink_rpc"], ports["flink_rest"] = free_port(), free_port()
    state["slots"] = slots
    state["conf"] = _flink_conf(state, slots)
    _flink_process(state, "jobmanager", "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
                   "GET_JM_RESOURCE_PARAMS", ["--executionMode", "cluster"])
    _wait("Flink's JobManager", lambda: _get_json(ports["flink_rest"], "/overview", state["host"]) is not None,
          state, "jobmanager", timeout)
    start_taskmanager(state, timeout)
    master = f"{state['host']}:{ports['flink_rest']}"
  # Beam's runner brings no logging backend: Flink's log4j jars give it one.
  log4j = tuple(os.path.join(state["home"], "lib", n) for n in sorted(os.listdir(os.path.join(state["home"], "lib")))
                if n.startswith("log4j-"))
  # On the cluster started here the job server reads its config.yaml too: a job without
  # --parallelism then runs on every slot (parallelism.default), not on one.
  conf = (f"--flink-conf-dir={state['conf']}",) if "conf" in state else ()
  _job_server(state, engine, (f"--flink-master={master}", *conf), log4j, timeout)
  _sdk_worker_pool(state, timeout)
  state["ui"] = f"http://{master}"
  return ["--runner=FlinkRunner", f"--flink_master={master}"]


# -- Spark ----------------------------------------------------------------------------

# What Spark's launcher scripts pass on Java 17 (org.apache.spark.launcher.JavaModuleOptions).
SPARK_JAVA17 = ["-XX:+IgnoreUnrecognizedVMOptions", "--add-opens=java.base/java.lang=ALL-UNNAMED",
                "--add-opens=java.base/java.lang.invoke=ALL-UNNAMED",
                "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
                "--add-opens=java.base/java.io=ALL-UNNAMED", "--add-opens=java.base/java.net=ALL-UNNAMED",
                "--add-opens=java.base/java.nio=ALL-UNNAMED", "--add-opens=java.base/java.util=ALL-UNNAMED",
                "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
                "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
                "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
                "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED", "--add-opens=java.base/sun.nio.cs=ALL-UNNAMED",
                "--add-opens=java.base/sun.security.action=ALL-UNNAMED",
                "--add-opens=java.base/sun.util.calendar=ALL-UNNAMED",
                "-Djdk.reflect.useDirectMethodHandle=false"]


def _start_spark(state: dict, slots: int, timeout: float, master: str | None) -> list[str]:
  engine = ENGINES["spark"]
  home = state["home"] = _home(engine)
  executors = ()
  if master is None:
    master = _spark_cluster(state, home, slots, timeout)
    # The driver's conf (Beam's runner reads spark.* properties) starts each job's executors,
    # which run Beam's runner for the SDK workers, with the agent; not on a cluster of one's
    # own, whose hosts need not have this path.
    executors = (f"-Dspark.executor.extraJavaOptions=-javaagent:{loopback_agent(engine)}",)
  # Beam's runner is the Spark driver, inside the job server: Spark's jars go after Beam's.
  # SPARK_LOCAL_IP: the driver (and its web UI, each job's) binds there, not to every interface.
  _job_server(state, engine, (f"--spark-master-url={master}",), (os.path.join(home, "jars"),), timeout,
              jvm=(*SPARK_JAVA17, *executors), env={"SPARK_LOCAL_IP": state["bind"]})
  _sdk_worker_pool(state, timeout)
  return ["--runner=SparkRunner"]


def _spark_cluster(state: dict, home: str, slots: int, timeout: float) -> str:
  """A standalone master and a worker; returns the master's URL."""
  ports = state["ports"]
  for name in ("spark_master", "spark_master_ui", "spark_worker_ui"):
    ports[name] = free_port()
  jars = _classpath(os.path.join(home, "jars"))
  # The worker starts executors from SPARK_HOME's jars; SPARK_SCALA_VERSION spares it
  # looking for a source build's assembly folders.
  # --host: where each listens for rpc (and advertises); SPARK_LOCAL_IP: where their web UIs,
  # and the executors the worker starts, listen.
  env = {"SPARK_HOME": home, "SPARK_LOCAL_IP": state["bind"], "SPARK_SCALA_VERSION": "2.12",
         "SPARK_WORKER_DIR": os.path.join(state["dir"], "work"), "SPARK_LOG_DIR": state["dir"]}
  host = state["host"]
  master = f"spark://{host}:{ports['spark_master']}"
  _spawn(state, "master", [_java(), *SPARK_JAVA17, "-Xmx512m", "-cp", jars, "org.apache.spark.deploy.master.Master",
                           "--host", host, "--port", str(ports["spark_master"]),
                           "--webui-port", str(ports["spark_master_ui"])], env)
  _wait("Spark's master", lambda: _get_json(ports["spark_master_ui"], "/json/", host) is not None,
        state, "master", timeout)
  # Each job stages the job server's classpath (about 420 MB) into the worker's folder: a
  # finished job's copy is removed after 10 minutes (and all of them by `stop`).
  cleanup = ["-Dspark.worker.cleanup.enabled=true", "-Dspark.worker.cleanup.interval=120",
             "-Dspark.worker.cleanup.appDataTtl=600"]
  _spawn(state, "worker", [_java(), *SPARK_JAVA17, *cleanup, "-Xmx512m", "-cp", jars,
                           "org.apache.spark.deploy.worker.Worker",
                           "--host", host, "--webui-port", str(ports["spark_worker_ui"]),
                           "--cores", str(slots), "--memory", "2g", master], env)
  _wait("Spark's worker", lambda: any(w.get("state") == "ALIVE" for w in
                                      (_get_json(ports["spark_master_ui"], "/json/", host) or {}).get("workers", [])),
        state, "worker", timeout)
  state["ui"] = f"http://{host}:{ports['spark_master_ui']}"
  return master


# -- Beam's Python job service --------------------------------------------------------

def _start_portable(state: dict, slots: int, timeout: float, master: str | None) -> list[str]:
  if master:
    raise EngineError("the portable engine has no master: it is Beam's job service itself")
  if state["bind"] not in (LOOPBACK, "localhost"):
    # Beam's service binds localhost, and tells a client to stage its files there.
    raise EngineError("the portable engine serves this machine only: its job service listens "
                      "on localhost, whatever --bind says")
  port = state["ports"]["job"] = free_port()
  # Through loopback.py: the servers the service starts for each job listen on localhost too.
  _spawn(state, "job_server", [sys.executable, "-m", "impax.pipelines.loopback",
                               "apache_beam.runners.portability.local_job_service_main",
                               f"--port={port}"])
  _wait("Beam's Python job service", _listening(port), state, "job_server", timeout)
  _sdk_worker_pool(state, timeout)
  return ["--runner=PortableRunner"]


# -- start, status, stop --------------------------------------------------------------

STARTERS = {"flink": _start_flink, "spark": _start_spark, "portable": _start_portable}


def start(name: str, directory: str | None = None, slots: int = 2, timeout: float = 180,
          master: str | None = None, bind: str = LOOPBACK) -> dict:
  """Starts an engine's cluster; returns its state, with the Beam options to pass after
  `impax build ... --` under "beam_options".

  master: an engine already running (Flink's HOST:REST_PORT, Spark's spark://HOST:PORT):
  only Beam's job server for it and the SDK worker pool are started.
  bind: the address every process listens on: anything but loopback lets whoever reaches it
  run code on this machine (Beam's job server and SDK worker pool have no authentication).
  """
  engine = _engine(name)
  if ":" in bind:
    raise EngineError(f"--bind {bind}: an IPv4 address or a host name (Beam's job server "
                      "writes its URLs as HOST:PORT)")
  directory = os.path.abspath(directory or state_dir(name))
  if (old := read_state(directory)) and any(_alive(p) for p in old["processes"].values()):
    raise EngineError(f"a {name} cluster started from {directory} is still running: "
                      f"`impax engine {name} stop` first (or --state-dir for another one)")
  if not fetched(name):
    fetch(name, log=lambda m: print(m, file=sys.stderr))
  shutil.rmtree(directory, ignore_errors=True)
  os.makedirs(directory)
  state = {"engine": name, "dir": directory, "bind": bind, "host": _reachable(bind), "ports": {},
           "processes": {}, "started": time.time()}
  try:
    options = STARTERS[name](state, slots, timeout, master)
  except BaseException:
    stop_state(state)  # a failed start leaves nothing running
    raise
  state["beam_options"] = options + [
      f"--job_endpoint={state['host']}:{state['ports']['job']}", "--environment_type=EXTERNAL",
      f"--environment_config={state['host']}:{state['ports']['sdk_worker_pool']}"]
  _write_state(state)
  return state


def status(state: dict) -> dict[str, bool]:
  """Each process's role: whether it is running."""
  return {role: _alive(p) for role, p in state["processes"].items()}


def kill(state: dict, role: str, sig: int = signal.SIGKILL) -> None:
  """Signals one process of the cluster (and its children) by the id start recorded."""
  process = state["processes"][role]
  if not _ours(process):
    return  # gone, and its id is another process's now
  try:
    os.killpg(process["pid"], sig)
  except ProcessLookupError:
    pass


def stop_state(state: dict, timeout: float = 20) -> None:
  """Stops every process the state names: SIGTERM, then SIGKILL after `timeout` seconds."""
  roles = list(state["processes"])
  for role in reversed(roles):
    kill(state, role, signal.SIGTERM)
  deadline = time.monotonic() + timeout
  alive = lambda role: _alive(state["processes"][role])
  while any(alive(r) for r in roles) and time.monotonic() < deadline:
    time.sleep(0.2)
  for role in roles:
    if alive(role):
      kill(state, role, signal.SIGKILL)
  for role in roles:
    alive(role)  # reaps a child
  # What Spark's worker staged for each job: copies of jars, not results or logs.
  shutil.rmtree(os.path.join(state["dir"], "work"), ignore_errors=True)


def stop(name: str, directory: str | None = None) -> bool:
  """Stops the cluster started from `directory`; False if none was recorded there."""
  state = read_state(os.path.abspath(directory or state_dir(_engine(name).name)))
  if state is None:
    return False
  stop_state(state)
  return True
