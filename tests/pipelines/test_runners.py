"""Dataflow and other runners, as far as this machine allows: the options `impax build ... --
--runner=...` assembles, a pipeline that unpickles in a fresh interpreter (as on a remote
worker), and a worker image of the pinned Beam version with ffmpeg and Beam's entrypoint."""

import json
import os
import re
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions, WorkerOptions)

from impax.cli import main as cli
from impax.pipelines import build, graph

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = "europe-west4-docker.pkg.dev/my-project/impax/worker:0.1.0"


class Captured(Exception):
  pass


@pytest.fixture
def launched(monkeypatch, tmp_path):
  """Runs `impax build` up to the pipeline's start; returns the options it was given."""
  seen = {}

  class Pipeline:
    def __init__(self, options):
      seen["options"] = options
      raise Captured

  monkeypatch.setattr(build.beam, "Pipeline", Pipeline)

  def launch(*args, lines=4):
    (tmp_path / "m.jsonl").write_text("".join(f'{{"id": "{i}", "image": "a.png"}}\n'
                                              for i in range(lines)))
    argv = ["build", "jsonl", "--input", str(tmp_path / "m.jsonl"), "--output",
            str(tmp_path / f"out{lines}"), *args]
    cli(argv)  # the CLI turns Captured into an exit code, after the options were seen
    return seen.pop("options")
  return launch


def test_dataflow_options_from_the_command_line(launched):
  options = launched("--workers", "16", "--", "--runner=DataflowRunner", "--project=my-project",
                     "--region=europe-west4", "--temp_location=gs://my-bucket/tmp",
                     f"--sdk_container_image={IMAGE}")
  assert options.view_as(StandardOptions).runner == "DataflowRunner"
  gcp = options.view_as(GoogleCloudOptions)
  assert (gcp.project, gcp.region, gcp.temp_location) == (
      "my-project", "europe-west4", "gs://my-bucket/tmp")
  worker = options.view_as(WorkerOptions)
  assert (worker.sdk_container_image, worker.num_workers, worker.max_num_workers) == (IMAGE, 16, 16)
  assert "direct_num_workers" not in options.get_all_options(drop_default=True)
  # Given explicitly, Beam's own worker options win over --workers.
  options = launched("--workers", "16", "--", "--runner=DataflowRunner", "--project=p",
                     "--region=r", "--temp_location=gs://b/t", f"--sdk_container_image={IMAGE}",
                     "--num_workers=4", "--max_num_workers=32")
  worker = options.view_as(WorkerOptions)
  assert (worker.num_workers, worker.max_num_workers) == (4, 32)


def test_flink_spark_and_the_direct_runner(launched):
  flink = launched("--workers", "6", "--", "--runner=FlinkRunner", "--flink_master=localhost:8081",
                   "--environment_type=DOCKER", f"--environment_config={IMAGE}")
  assert flink.get_all_options()["parallelism"] == 6
  assert flink.get_all_options()["environment_config"] == IMAGE
  spark = launched("--", "--runner=SparkRunner", "--spark_master_url=spark://host:7077",
                   "--environment_type=DOCKER", f"--environment_config={IMAGE}")
  assert spark.get_all_options()["spark_master_url"] == "spark://host:7077"
  direct = launched("--workers", "3").get_all_options()
  assert (direct["runner"], direct["direct_running_mode"], direct["direct_num_workers"]) == (
      "DirectRunner", "multi_threading", 3)


def test_a_small_input_starts_no_more_workers_than_it_has_entries(launched):
  mode = lambda o: (o.get_all_options()["direct_running_mode"], o.get_all_options()["direct_num_workers"])
  # Threads of the launcher: no worker process to start.
  assert mode(launched("--workers", "3", lines=2)) == ("multi_threading", 2)
  assert mode(launched("--workers", "4", lines=9)) == ("multi_threading", 4)
  # More workers than that, or an input the launcher did not count: processes.
  assert mode(launched("--workers", "5", lines=9)) == ("multi_processing", 5)
  assert mode(launched("--workers", "3", lines=3000)) == ("multi_processing", 3)  # over 64 KB
  # One entry or one worker: the launcher's own process, no worker to start.
  assert mode(launched("--workers", "3", lines=1)) == ("in_memory", 1)
  assert mode(launched("--workers", "1")) == ("in_memory", 1)
  # Beam's own options, given, win.
  assert mode(launched("--workers", "3", "--", "--direct_running_mode=multi_processing",
                       lines=1)) == ("multi_processing", 1)


def test_dataflow_without_a_worker_image_is_refused(tmp_path, capsys):
  (tmp_path / "m.jsonl").write_text('{"image": "a.png"}\n')
  code = cli(["build", "jsonl", "--input", str(tmp_path / "m.jsonl"), "--output",
              str(tmp_path / "out"), "--", "--runner=DataflowRunner", "--project=p",
              "--region=r", "--temp_location=gs://b/t"])
  assert code == 2 and "--sdk_container_image=IMAGE" in capsys.readouterr().err
  with pytest.raises(build.BuildError, match="unknown Beam pipeline option.*--num_wrkers"):
    build.pipeline_options(["--num_wrkers=3"])



def test_the_dask_runner_is_refused_before_anything_runs(tmp_path, capsys):
  (tmp_path / "m.jsonl").write_text('{"image": "a.png"}\n')
  for runner in ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"):
    code = cli(["build", "jsonl", "--input", str(tmp_path / "m.jsonl"), "--output",
                str(tmp_path / "out"), "--", f"--runner={runner}",
                "--dask_client_address=127.0.0.1:8786"])
    err = capsys.readouterr().err
    assert code == 2 and "the DaskRunner cannot build impax datasets" in err, err
    assert "still reports success" in err and "--runner=PortableRunner" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written
  # Its flags are known, though Beam's DaskOptions (which imports dask) is not loaded.
  build.pipeline_options(["--dask_client_address=127.0.0.1:8786"])


def test_runner_names_as_users_write_them(launched):
  for runner in ("PortableRunner", "PrismRunner", "SparkRunner", "FlinkRunner",
                 "apache_beam.runners.portability.portable_runner.PortableRunner"):
    options = launched("--", f"--runner={runner}", "--job_endpoint=127.0.0.1:8099")
    assert options.view_as(StandardOptions).runner == runner
    assert "direct_num_workers" not in options.get_all_options(drop_default=True)
  dotted = launched("--workers", "2", "--", "--runner=apache_beam.runners.direct.DirectRunner")
  assert dotted.get_all_options()["direct_num_workers"] == 2


UNPICKLE = """
import sys
from apache_beam import Pipeline
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
proto = beam_runner_api_pb2.Pipeline.FromString(open(sys.argv[1], "rb").read())
Pipeline.from_runner_api(proto, None, PipelineOptions([]))
print("ok", sorted(m for m in sys.modules if m.startswith("impax.")))
"""


def test_the_pipeline_unpickles_in_a_fresh_interpreter(tmp_path):
  """What a remote worker does with the launcher's pickles; the test module is not importable
  there, so nothing may refer to it."""
  (tmp_path / "m.jsonl").write_text('{"image": "a.png", "caption": "a"}\n')
  plan = build.prepare("jsonl", str(tmp_path / "m.jsonl"), str(tmp_path / "out"))
  p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
  graph.build_pipeline(p, plan)
  (tmp_path / "pipeline.pb").write_bytes(p.to_runner_api().SerializeToString())
  result = subprocess.run([sys.executable, "-c", UNPICKLE, str(tmp_path / "pipeline.pb")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "impax.pipelines.graph" in result.stdout and "impax.pipelines.read" in result.stdout


def test_the_worker_image_has_the_pinned_beam_ffmpeg_and_the_boot_entrypoint():
  with open(os.path.join(ROOT, "Dockerfile")) as f:
    dockerfile = f.read()
  with open(os.path.join(ROOT, "constraints.txt")) as f:
    pinned = re.search(r"^apache-beam==(\S+)$", f.read(), re.M)[1]
  image = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:(\S+)$", dockerfile, re.M)
  assert image, "FROM must be a Beam Python SDK image"
  assert image[2] == pinned
  assert image[1] == f"{sys.version_info.major}.{sys.version_info.minor}"  # the pins' Python
  assert re.search(r"apt-get install .*\bffmpeg\b", dockerfile)
  assert re.search(r"pip install .*-c constraints\.txt \.", dockerfile)
  assert json.loads(re.search(r"^ENTRYPOINT (.*)$", dockerfile, re.M)[1]) == ["/opt/apache/beam/boot"]
  # Every package folder pyproject.toml maps is copied in.
  with open(os.path.join(ROOT, "pyproject.toml")) as f:
    folders = {v.split("/")[0] for v in re.findall(r'^"impax[^"]*" = "([^"]+)"', f.read(), re.M)}
  copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.M))
  assert folders <= copied, folders - copied
