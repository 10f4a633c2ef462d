"""What each engine runs, and fetching it once into the cache, checked against pinned checksums.

`impax engine ENGINE fetch` (make install runs it) fetches into cache_dir()
(IMPAX_ENGINE_CACHE, default ~/.cache/impax/engines), and every file is checked against
ENGINE_JARS (engine_jars.sha256, package data):
  - Flink 1.19.3: the distribution's jars, from PyPI's apache-flink-libraries sdist;
  - Spark 3.5.9: the distribution's jars, from PyPI's pyspark sdist;
  - Beam's Flink and Spark job servers from Maven Central, with their dependencies.
    Maven Central serves no Beam 2.77.0 Java artifact, and no job-server jar at any
    version: the job servers are Beam Java 2.62.0's runner modules (their driver class
    on a classpath), the newest with a job service, driving the Python 2.77.0 SDK over
    Beam's portability protocol;
  - Prism, built with `go build` from Beam's Go module, its job port bound to loopback.
A fetched folder appears whole or not at all, and is kept.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
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
  job_invoker: str | None  # its JobInvoker class, which beam_services.BOUND_JOB_SERVER serves


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


def lookup(name: str) -> Engine:
  if name not in ENGINES:
    raise EngineError(f"unknown engine {name!r}: one of {', '.join(ENGINES)}")
  return ENGINES[name]


def home(engine: Engine) -> str:
  return os.path.join(cache_dir(), f"{engine.name}-{engine.distribution.version}")


def job_server_dir(engine: Engine) -> str:
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
  folder = home(engine)
  if os.path.isdir(folder):
    return folder
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
    _check(folder, _jar_digests(extracted), os.path.basename(folder))
    _publish(extracted, folder)
  return folder


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
  folder = job_server_dir(engine)
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
  engine = lookup(name)
  if engine.distribution:
    _fetch_distribution(engine, log)
  if engine.job_server:
    _fetch_job_server(engine, log)


def fetched(name: str) -> bool:
  if name == "prism":
    return os.path.exists(prism_binary())
  engine = lookup(name)
  return ((not engine.distribution or os.path.isdir(home(engine)))
          and (not engine.job_server or os.path.isdir(job_server_dir(engine))))

