"""A real Prefect server on loopback, a small corpus, and its dataset built by the flow."""

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from impax import demo


class Server:
  def __init__(self, url: str, home: str):
    self.url, self.home = url, home
    # For processes of our own (serve): the same server, database and result storage.
    self.env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": home,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

  @contextlib.contextmanager
  def used(self):
    """This process's Prefect client talks to this server while in the block."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_HOME,
                                  PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings)
    with temporary_settings(updates={PREFECT_API_URL: self.url, PREFECT_HOME: self.home,
                                     PREFECT_SERVER_ANALYTICS_ENABLED: False}):
      yield self
      # Send what is still queued while the server is up, or the exit waits on retries.
      from prefect.events.worker import EventsWorker
      from prefect.logging.handlers import APILogWorker
      APILogWorker.drain_all()
      EventsWorker.drain_all()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _healthy(url: str) -> bool:
  try:
    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
      return response.read().strip() == b"true"
  except OSError:
    return False


@contextlib.contextmanager
def _process_group(command: list[str], env: dict, log_path: str):
  """A subprocess in its own process group, ended (all of it) on exit."""
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
  try:
    yield proc
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGTERM)
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


@contextlib.contextmanager
def _prefect_server(home, env: dict | None = None):
  """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME, ended on exit."""
  url = f"http://127.0.0.1:{_free_port()}/api"
  server = Server(url, str(home))
  command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", url.rsplit(":", 1)[1].split("/")[0]]
  log_path = str(home / "server.log")
  with _process_group(command, {**server.env, **(env or {})}, log_path) as proc:
    deadline = time.monotonic() + 120
    while not _healthy(url):
      if proc.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"the Prefect server did not start:\n{open(log_path).read()[-3000:]}")
      time.sleep(0.5)
    yield server


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
  """A Prefect server on its embedded SQLite database, the default, with its UI; this
  process uses it."""
  with _prefect_server(tmp_path_factory.mktemp("prefect-home")) as server, server.used():
    yield server


def _postgres_module():
  spec = importlib.util.spec_from_file_location("impax_test_postgres",
                                                os.path.join(os.path.dirname(__file__),
                                                             "postgres.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def postgres():
  """The URL of a PostgreSQL server on 127.0.0.1: .ci/run's (IMPAX_TEST_POSTGRES_URL), or
  one started here from Debian's postgresql and stopped by its process id."""
  if url := os.environ.get("IMPAX_TEST_POSTGRES_URL"):
    yield url
    return
  postgres = _postgres_module()
  url, pid, directory = postgres.start()
  try:
    yield url
  finally:
    postgres.stop(pid, directory)


@pytest.fixture(scope="module")
def postgres_prefect_server(postgres, tmp_path_factory):
  """A Prefect server on a fresh PostgreSQL database (use it with `with server.used():`)."""
  home = tmp_path_factory.mktemp("prefect-postgres-home")
  database = _postgres_module().create_database(postgres, f"prefect_{os.getpid()}_{home.name[-1]}")
  with _prefect_server(home, {"PREFECT_API_DATABASE_CONNECTION_URL": database,
                              "PREFECT_SERVER_UI_ENABLED": "false"}) as server:
    yield server


# One task and one shape keep compilation, most of a tiny run's time, short.
TINY_CONFIG = '''
from impax.datasets.loader import Bucket
from impax.train.config import Task, TrainConfig

def get_config(data):
  return TrainConfig(
      tasks=(Task("image_text", data, "contrastive", ("image", "text"),
                  buckets=(Bucket(image=(16, 16)),), token_budget=64, text_length=8),),
      model="tiny", steps=10, warmup_steps=1, learning_rate=2e-3, log_every=1,
      checkpoint_every=2)
'''


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> str:
  """A training config file of one tiny task: tiny.py, whose get_config takes the data."""
  path = tmp_path_factory.mktemp("config") / "tiny.py"
  path.write_text(TINY_CONFIG)
  return str(path)


@pytest.fixture(scope="session")
def image_corpus(tmp_path_factory) -> dict[str, str]:
  """Manifests of a small image corpus; train has a missing image and a broken line."""
  root = tmp_path_factory.mktemp("flow-corpus")
  manifests = demo.generate(str(root), videos=0, images=30, audio=0, size=32, seed=5)
  train = root / "images-train-with-failures.jsonl"
  with open(manifests["images-train"]) as f:
    lines = f.read().splitlines()
  lines.append(json.dumps({"id": "missing", "image": str(root / "no-such.png"), "label": "one"}))
  lines.append("{not json")
  train.write_text("\n".join(lines) + "\n")
  return {"train": str(train), "test": manifests["images-test"],
          "clean-train": manifests["images-train"]}


def build_parameters(corpus: dict, output: str) -> dict:
  return {"spec": "jsonl", "output": output,
          "splits": [{"name": "train", "input": corpus["train"]},
                     {"name": "test", "input": corpus["test"]}],
          "options": {"image_short_side": 32, "num_shards": 2}, "workers": 1}


@pytest.fixture(scope="session")
def images(prefect_server, image_corpus, tmp_path_factory):
  """The image corpus built by build_dataset: (its parameters, the flow run's final state)."""
  from impax.flows.build import build_dataset
  params = build_parameters(image_corpus, str(tmp_path_factory.mktemp("datasets") / "images"))
  return params, build_dataset(**params, return_state=True)


class Api:
  """What a user reads back through the REST API: a run's artifacts, logs and task runs."""

  def __init__(self, url: str):
    import httpx
    self.http = httpx.Client(base_url=url, timeout=30)

  def get(self, path: str):
    response = self.http.get(path)
    response.raise_for_status()
    return response.json()

  def post(self, path: str, body: dict):
    response = self.http.post(path, json=body)
    response.raise_for_status()
    return response.json()

  def artifacts(self, flow_run_id) -> dict[str, object]:
    """{key: data} of a flow run's artifacts; tables as lists of rows."""
    found = self.post("/artifacts/filter", {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}})
    return {a["key"]: json.loads(a["data"]) if a["type"] == "table" else a["data"] for a in found}

  def logs(self, flow_run_id) -> str:
    from prefect.logging.handlers import APILogWorker
    APILogWorker.drain_all()  # logs travel in batches
    found = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [str(flow_run_id)]}},
                                       "sort": "TIMESTAMP_ASC"})
    return "\n".join(log["message"] for log in found)

  def task_runs(self, flow_run_id) -> dict[str, dict]:
    """{name: task run} of a flow run."""
    found = self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}})
    return {r["name"]: r for r in found}

  def subflow_runs(self, flow_run_id) -> dict[str, dict]:
    """{flow name: flow run} of the flow runs a flow run started."""
    found = self.post("/flow_runs/filter",
                      {"flow_runs": {"parent_flow_run_id": {"any_": [str(flow_run_id)]}}})
    return {self.get(f"/flows/{r['flow_id']}")["name"]: r for r in found}



@pytest.fixture(scope="session")
def api_of():
  """Api(url): the REST API of another server than prefect_server's."""
  return Api


@pytest.fixture(scope="session")
def api(prefect_server):
  api = Api(prefect_server.url)
  yield api
  api.http.close()


@pytest.fixture
def process_group():
  """process_group(command, env, log_path): a context manager of a subprocess, ended on exit."""
  return _process_group
