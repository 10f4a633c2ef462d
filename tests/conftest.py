"""Fixtures shared across test folders: a small demo corpus built into prepared datasets."""

import pathlib
import shutil

import jax
import pytest

from impax import demo
from impax.pipelines import build, processes


TESTS = pathlib.Path(__file__).parent


def _group(nodeid: str) -> str:
  """The worker group of a test: `make test` runs the suite on pytest-xdist workers, and a
  worker makes its own session fixtures, so the tests that share an expensive one run on
  one worker and it is made once: the modules on the prepared demo datasets (those that
  name the `demo_data` fixture), and the Prefect tests (one server, one PostgreSQL). Every
  other test stays with its module's, which share module fixtures."""
  module = nodeid.split("::", 1)[0]
  if module.startswith("tests/flows/"):
    return "prefect"
  path = TESTS.parent / module
  if path.suffix == ".py" and path.is_file() and "demo_data" in path.read_text():
    return "demo_data"
  return module


def pytest_xdist_make_scheduler(config, log):
  """Groups as `_group` says (xdist's own --dist loadgroup marks do not reach its scheduler
  under pytest 9.2: pytest-dev/pytest-xdist#1386)."""
  from xdist.scheduler import LoadScopeScheduling

  class Groups(LoadScopeScheduling):
    def _split_scope(self, nodeid):
      return _group(nodeid)

  return Groups(config, log)


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
  """JAX's persistent compilation cache in a fresh folder for the session, in this process and
  (through the environment) in the trainers tests start: a program compiled once, in one test,
  is loaded in the next (the trainer tests' runs compile the same steps; on 2 CPU cores that is
  most of their time). Fresh, so each session still compiles every program once for real."""
  folder = str(tmp_path_factory.mktemp("jax-compilation-cache"))
  settings = {"jax_compilation_cache_dir": folder,
              "jax_persistent_cache_min_compile_time_secs": 0,  # the tiny models' programs too
              "jax_persistent_cache_min_entry_size_bytes": -1}  # no size floor either
  with pytest.MonkeyPatch.context() as patch:
    for name, value in settings.items():
      patch.setenv(name.upper(), str(value))  # what subprocesses read when jax starts
      jax.config.update(name, value)  # this process: jax was imported before the session began
    yield folder


SETTINGS = {"video_short_side": 48, "image_short_side": 48, "video_fps": 8.0, "num_shards": 2}


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, str]:
  """{"videos", "images", "audio"}: prepared datasets with a train and a test split."""
  root = tmp_path_factory.mktemp("demo-data")
  manifests = demo.generate(str(root / "raw"), videos=40, images=30, audio=20, seconds=1.5,
                            size=48, seed=3)
  # One tokenizer for all, as the demo's: the trainer refuses text tasks that differ.
  tokenizer = demo.shared_tokenizer(manifests, str(root / "raw" / "tokenizer.model"))
  out = {}
  for key, manifest in sorted(manifests.items()):
    modality, split = key.rsplit("-", 1)
    plan = build.prepare("jsonl", manifest, str(root / modality), split,
                         ({**SETTINGS, "tokenizer": tokenizer},))
    build.run(plan, workers=1)
    out[modality] = str(root / modality)
  return out


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
  """Debian's headless chromium, driven by selenium through its chromedriver."""
  # A browser test that skips proves nothing: without the browser it fails, saying what to install.
  assert CHROMIUM and CHROMEDRIVER, (
      "the browser tests need Debian's chromium and chromium-driver: run "
      "scripts/install.sh as root (make install), or apt-get install chromium chromium-driver")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1000",
               "--force-device-scale-factor=1"):
    options.add_argument(flag)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  # The driver given: selenium looks for nothing and downloads nothing.
  driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
  yield driver
  driver.quit()


@pytest.fixture(scope="session")
def serve():
  """serve(command, log_path) -> (process, port): a server (an object-store emulator) started
  on a free loopback port ({port} in the command), once it listens; the caller stops it."""
  return processes.serve
