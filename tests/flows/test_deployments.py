"""prefect.yaml as Prefect users run it: `prefect deploy --all` from the repository, a
worker in its own process, the chained training, the server's concurrency limit; on the
embedded SQLite database and on PostgreSQL."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from impax import demo

REPO = pathlib.Path(__file__).resolve().parents[2]


def prefect(args: list[str], env: dict, timeout: int = 180) -> str:
  done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stdout + done.stderr
  return done.stdout


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request):
  """The server these tests deploy to: on SQLite (the default) and on PostgreSQL."""
  return request.getfixturevalue("prefect_server" if request.param == "sqlite"
                                 else "postgres_prefect_server")


@pytest.fixture(autouse=True)
def using(server):
  with server.used():
    yield


@pytest.fixture(scope="module")
def api(server, api_of):
  api = api_of(server.url)
  yield api
  api.http.close()


@pytest.fixture(scope="module")
def env(server):
  # The worker polls every second (10 s by default); COLUMNS keeps its output on one line.
  return {**server.env, "PREFECT_WORKER_QUERY_SECONDS": "1", "COLUMNS": "250"}


@pytest.fixture(scope="module")
def deployed(env, api):
  """{name: deployment} after the README's commands, run from the repository root."""
  # --overwrite: a test of one backend alone sets this up again on the same server
  prefect(["work-pool", "create", "impax", "--type", "process", "--overwrite"], env)
  prefect(["work-pool", "set-concurrency-limit", "impax", "1"], env)
  prefect(["--no-prompt", "deploy", "--all"], env)
  found = api.post("/deployments/filter", {})
  return {d["name"]: d for d in found if d["work_pool_name"] == "impax"}


@pytest.fixture(scope="module")
def demo_root(server, tmp_path_factory) -> str:
  """A demo root with a small images corpus, one per server; train has two images that are
  not images."""
  root = tmp_path_factory.mktemp("demo-root")
  corpus = root / "corpus"
  demo.write_corpus(str(corpus), videos=0, images=20, audio=0, seed=3)
  train = corpus / "images-train.jsonl"
  first = json.loads(train.read_text().splitlines()[0])
  lines = []
  for n in (1, 2):
    (corpus / f"broken-{n}.png").write_bytes(b"not an image %d" % n)
    lines.append(json.dumps({**first, "id": f"broken-{n}", "image": str(corpus / f"broken-{n}.png")}))
  with open(train, "a") as f:
    f.write("\n".join(lines) + "\n")
  return str(root)


def run_worker_once(env, tmp_path, name="worker") -> None:
  """`prefect worker start --pool impax --run-once --limit 1`: what is due, run to its end."""
  log = tmp_path / f"{name}.log"
  with open(log, "wb") as out:
    done = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", "impax",
                           "--run-once", "--limit", "1"], cwd=tmp_path, env=env, stdout=out,
                          stderr=subprocess.STDOUT, timeout=300)
  assert done.returncode == 0, log.read_text()[-3000:]


def create_run(name: str, parameters: dict):
  from prefect.deployments import run_deployment
  return run_deployment(name, parameters=parameters, timeout=0)


def wait_for(predicate, timeout=60, what="it"):
  deadline = time.monotonic() + timeout
  while not (found := predicate()):
    if time.monotonic() > deadline:
      raise AssertionError(f"waited {timeout} s for {what}")
    time.sleep(0.5)
  return found


def runs_of(api, deployment_id) -> list[dict]:
  return api.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}},
                                        "sort": "EXPECTED_START_TIME_ASC"})


def test_prefect_deploy_registers_what_the_table_defines(deployed):
  assert sorted(deployed) == sorted(["build-videos", "build-images", "build-audio",
                                     "build-dataset", "train-demo", "evaluate-demo",
                                     "end-to-end-demo"])
  images = deployed["build-images"]
  assert images["tags"] == ["build", "dataset:images", "spec:jsonl"]
  assert images["parameters"] == {"root": "demo-output", "dataset": "images"}
  assert images["description"].startswith("Build the demo's images dataset")
  # the nightly build, off until turned on
  [nightly] = images["schedules"]
  assert nightly["schedule"]["cron"] == "0 2 * * *" and not nightly["active"]
  # limits the server enforces and the UI shows
  assert all(d["global_concurrency_limit"]["limit"] == 1 for d in deployed.values())
  # runs start in the repository, where the relative defaults point
  assert images["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
      "directory": str(REPO)}}]
  assert deployed["train-demo"]["parameters"]["config"] == "train/configs/demo.py:demo-output/data"


def test_a_worker_runs_a_build_that_starts_training_on_new_data(deployed, demo_root, env, api,
                                                                process_group, tmp_path, request):
  params = {"root": demo_root, "dataset": "images", "workers": 1}
  flow_run = create_run("build_demo_dataset/build-images", params)
  run_worker_once(env, tmp_path)
  done = api.get(f"/flow_runs/{flow_run.id}")
  assert done["state"]["type"] == "COMPLETED", done["state"]
  assert done["name"] == "build images [train, validation, test] of the demo"
  assert done["state"]["message"] == "train, validation, test: built"
  tasks = sorted(api.task_runs(flow_run.id))
  assert tasks == ["build test", "build train", "build validation", "card", "check", "publish"]
  # The two broken images fail alike: one row, counted twice, its text shown by the UI.
  failures = api.artifacts(flow_run.id)["build-images-failures"]
  assert ("| image | &lt;image> is not a readable image: cannot identify image file "
          "&lt;_io.BytesIO object> | 2 |") in failures
  assert " at 0x" not in failures

  # The build emitted its event: the trigger started train-demo on this root.
  train_id = deployed["train-demo"]["id"]
  [chained] = wait_for(lambda: runs_of(api, train_id), what="the chained training")
  # a run of its own per version of the data (flows/train.py resolves `{data}`)
  assert chained["parameters"] == {"config": demo.config_for(demo_root),
                                   "workdir": os.path.join(demo_root, "runs", "{data}")}
  assert chained["state"]["type"] == "SCHEDULED"
  api.http.delete(f"/flow_runs/{chained['id']}").raise_for_status()  # not trained here

  if request.node.callspec.params["server"] == "postgresql":
    # On PostgreSQL as on SQLite: the same build again is served from the cache and starts
    # no training. (What follows is the server's scheduling, the same on either database:
    # on SQLite alone, to keep the suite's time.)
    cached = create_run("build_demo_dataset/build-images", params)
    run_worker_once(env, tmp_path, "worker-cached")
    assert api.get(f"/flow_runs/{cached.id}")["state"]["message"] == \
        "train, validation, test: from the cache"
    time.sleep(3)
    assert runs_of(api, train_id) == []
    return

  # The same build again, twice: served from the cache, one at a time (the pool's limit).
  first = create_run("build_demo_dataset/build-images", params)
  second = create_run("build_demo_dataset/build-images", params)
  command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "impax"]
  log = str(tmp_path / "worker.log")
  with process_group(command, env, log):
    running = wait_for(lambda: [r for r in (api.get(f"/flow_runs/{i}") for i in (first.id, second.id))
                                if r["state"]["type"] == "RUNNING"], timeout=120,
                       what="a run to start")
    held = {str(first.id), str(second.id)} - {r["id"] for r in running}
    assert len(running) == 1 and len(held) == 1
    assert api.get(f"/flow_runs/{held.pop()}")["state"]["type"] == "SCHEDULED"
    finished = wait_for(lambda: all(api.get(f"/flow_runs/{i}")["state"]["type"] == "COMPLETED"
                                    for i in (first.id, second.id)), timeout=180,
                        what="both runs to finish:\n" + log)
  a, b = sorted((api.get(f"/flow_runs/{i}") for i in (first.id, second.id)),
                key=lambda r: r["start_time"])
  assert b["start_time"] >= a["end_time"]
  assert a["state"]["message"] == b["state"]["message"] == \
      "train, validation, test: from the cache"
  # Nothing new was built: no training was started.
  time.sleep(3)
  assert finished and runs_of(api, train_id) == []

  # New data again within the hour (as the other nightly builds bring): built, its event
  # emitted, but the trigger has fired for this hour, so no second training is queued.
  test = os.path.join(demo_root, "corpus", "images-test.jsonl")
  with open(test) as f:
    kept = f.read().splitlines()[:-1]
  with open(test, "w") as f:
    f.write("\n".join(kept) + "\n")
  again = create_run("build_demo_dataset/build-images", params)
  run_worker_once(env, tmp_path, "worker-again")
  assert api.get(f"/flow_runs/{again.id}")["state"]["message"] == (
      "train, validation: from the cache; test: built")
  wait_for(lambda: [e for e in api.post("/events/filter", {"filter": {
      "event": {"name": ["impax.dataset.built"]},
      "related": {"id": [f"prefect.flow-run.{again.id}"]}}})["events"]],
      what="the second build's event")
  time.sleep(10)
  assert runs_of(api, train_id) == []


def finished(api, flow_run_id, timeout=300) -> dict:
  done = wait_for(lambda: (r := api.get(f"/flow_runs/{flow_run_id}"))["state"]["type"] in (
      "COMPLETED", "FAILED", "CRASHED") and r, timeout=timeout, what=f"flow run {flow_run_id}")
  assert done["state"]["type"] == "COMPLETED", done["state"]
  return done


# The worker's runs of the other deployments, on the default database (the demo build's
# above covers both).
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_a_worker_runs_training_evaluation_and_end_to_end(deployed, demo_root, env, api,
                                                          process_group, tiny_config, tmp_path):
  config = tiny_config
  corpus = os.path.join(demo_root, "corpus")
  images = {"spec": "jsonl", "output": str(tmp_path / "e2e" / "images"),
            "splits": [{"name": n, "input": os.path.join(corpus, f"images-{n}.jsonl")}
                       for n in ("train", "test")],
            "options": {"image_short_side": 32, "num_shards": 1}}
  from impax.train import config as config_lib, inputs
  trained_on = f"{config}:{images['output']}"
  command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "impax"]
  with process_group(command, env, str(tmp_path / "worker.log")):
    built = create_run("build_dataset/build-dataset", {**images, "workers": 1})
    done = finished(api, built.id)
    assert done["name"] == "build images [train, test]"
    assert done["state"]["message"] == "train, test: built"
    # end-to-end: the same corpus, served from the cache, and a training on it
    e2e = create_run("end_to_end/end-to-end-demo", {
        "root": str(tmp_path / "e2e"), "corpora": [images],
        "config": f"{config}:{images['output']}", "steps": 2, "workers": 1})
    done = finished(api, e2e.id)
    assert done["name"] == f"end to end in {tmp_path / 'e2e'}"
    subflows = api.subflow_runs(e2e.id)
    assert {name: r["state"]["type"] for name, r in subflows.items()} == {
        "build_dataset": "COMPLETED", "train": "COMPLETED"}
    assert subflows["build_dataset"]["state"]["message"] == "train, test: from the cache"
    report = api.artifacts(e2e.id)["end-to-end-e2e"]
    assert "| image_text | zero_shot_top1 |" in report and "2 steps in" in report, report

    # In a run folder named by the version of its data, as the chained training's.
    trained = create_run("train/train-demo", {"config": trained_on, "steps": 3,
                                              "workdir": str(tmp_path / "runs" / "{data}")})
    done = finished(api, trained.id)
    assert done["name"] == "train tiny 3 steps"
    version = inputs.data_version(config_lib.load(trained_on, []))
    assert os.listdir(tmp_path / "runs") == [version] and len(version) == 12
    workdir = str(tmp_path / "runs" / version)
    assert [r["step"] for r in api.artifacts(trained.id)[f"training-curves-{version}"]] == [1, 2, 3]

    evaluated = create_run("evaluate/evaluate-demo", {"config": trained_on, "workdir": workdir})
    done = finished(api, evaluated.id)
    assert done["name"] == "evaluate tiny"
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["step"] == 3
  published = {(r["task"], r["metric"]): r["value"]
               for r in api.artifacts(evaluated.id)[f"evaluation-{version}"]}
  assert published[("image_text", "zero_shot_top1")] == (
      written["results"]["image_text"]["zero_shot_top1"])

  # That run folder holds a run on that data: resuming it on other data is refused.
  from impax.train import trainer
  from impax.train.config import ConfigError
  elsewhere = str(tmp_path / "elsewhere" / "images")
  shutil.copytree(images["output"], elsewhere)
  other = config_lib.load(f"{config}:{elsewhere}", [])
  with pytest.raises(ConfigError, match=rf"{re.escape(workdir)} holds a run on other data: "
                                        rf".*{re.escape(elsewhere)}.* changed since"):
    trainer.train(other, workdir, log=lambda *_: None)


def test_a_refused_run_says_why_in_its_state(tmp_path, api):
  from impax.flows.build import build_dataset
  from impax.flows.demo import build_demo_dataset
  fresh = str(tmp_path / "fresh")
  state = build_demo_dataset(root=fresh, return_state=True)
  assert state.is_failed()
  assert state.message == (f"no demo corpus in {fresh}/corpus yet: generate it first with "
                           f"`impax demo-corpus {fresh}/corpus` (or run end_to_end on {fresh})")
  missing = str(tmp_path / "x.jsonl")
  state = build_dataset(spec="jsonl", output=str(tmp_path / "out"),
                        splits=[{"name": "train", "input": missing}], return_state=True)
  run = api.get(f"/flow_runs/{state.state_details.flow_run_id}")
  assert run["name"] == "build out [train]"
  assert run["state"]["type"] == "FAILED"
  assert run["state"]["message"] == f"input {missing} does not exist"
