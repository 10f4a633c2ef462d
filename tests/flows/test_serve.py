"""`python -m impax.flows.serve`: deployments on a real server, runs triggered through the API."""

import os
import subprocess
import sys
import time

import httpx

DEPLOYMENTS = ("build_dataset/build-dataset", "build_demo_dataset/build-videos",
               "build_demo_dataset/build-images", "build_demo_dataset/build-audio",
               "train/train-demo", "evaluate/evaluate-demo", "end_to_end/end-to-end-demo")


def wait_for_deployments(api, proc, log_path, root, timeout=120) -> dict[str, dict]:
  deadline = time.monotonic() + timeout
  while True:
    try:
      found = {name: api.get(f"/deployments/name/{name}") for name in DEPLOYMENTS}
      # The same names from prefect.yaml (test_deployments) until serve takes them over.
      if all(d["parameters"].get("root", root) == root and
             d["parameters"].get("workdir", os.path.join(root, "run")) == os.path.join(root, "run")
             for d in found.values()):
        return found
      raise httpx.HTTPStatusError("not served yet", request=None, response=None)
    except httpx.HTTPStatusError:
      if proc.poll() is not None or time.monotonic() > deadline:
        raise AssertionError(f"deployments not served:\n{open(log_path).read()[-3000:]}")
      time.sleep(0.5)


def test_served_deployments_run_from_the_api(prefect_server, images, api, process_group,
                                             tmp_path):
  from prefect.deployments import run_deployment
  params, _ = images
  root = str(tmp_path / "demo")
  log_path = str(tmp_path / "serve.log")
  command = [sys.executable, "-m", "impax.flows.serve", "--root", root]
  with process_group(command, prefect_server.env, log_path) as proc:
    served = wait_for_deployments(api, proc, log_path, root)

    # The UI's forms come from the flows' typed parameters.
    schema = served["build_dataset/build-dataset"]["parameter_openapi_schema"]
    assert schema["required"] == ["spec", "output", "splits"]
    assert "video_fps" in schema["definitions"]["BuildOptions"]["properties"]
    assert served["train/train-demo"]["parameters"]["workdir"] == os.path.join(root, "run")
    # The nightly builds: one per demo dataset, off until turned on.
    [videos] = served["build_demo_dataset/build-videos"]["schedules"]
    assert videos["schedule"]["cron"] == "0 2 * * *" and not videos["active"]
    assert served["build_demo_dataset/build-videos"]["parameters"] == {
        "root": root, "dataset": "videos"}
    # The one-run-at-a-time limit is the server's, shown in the UI.
    assert all(d["global_concurrency_limit"]["limit"] == 1 for d in served.values())

    # A run with bad parameters is refused when it is created, naming the field.
    response = api.http.post(f"/deployments/{served['build_dataset/build-dataset']['id']}/create_flow_run",
                             json={"parameters": {**params, "workers": 0}})
    assert response.status_code == 409
    assert "Validation failed for field 'workers'" in response.text

    flow_run = run_deployment("build_dataset/build-dataset", parameters=params, timeout=180,
                              poll_interval=1)
    assert flow_run.state.is_completed(), open(log_path).read()[-3000:]
  # The command line lists what the server holds (FastAPI >= 0.151 answered these with 422).
  listings = {}
  for what in ("deployment", "artifact"):
    listing = subprocess.run([sys.executable, "-m", "prefect", what, "ls"], capture_output=True,
                             env={**prefect_server.env, "COLUMNS": "250"}, text=True, timeout=120)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    listings[what] = listing.stdout
  assert all(name in listings["deployment"] for name in DEPLOYMENTS), listings["deployment"]
  assert "build-images" in listings["artifact"], listings["artifact"]
  # It ran in the served process, from the same cache as the build before it.
  table = api.artifacts(flow_run.id)["build-images"]
  assert [(r["split"], r["examples"], r["this run"]) for r in table] == [
      ("train", 24, "from cache"), ("test", 6, "from cache")]
