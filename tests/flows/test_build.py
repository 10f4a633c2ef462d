"""build_dataset against a real Prefect server: builds, artifacts, the cache, retries, bad input."""

import hashlib
import json
import os
import shutil

import pytest


def read_json(path):
  with open(path) as f:
    return json.load(f)


def shard_digests(output) -> dict[str, tuple[str, int]]:
  """{shard: (sha256, mtime in ns)}."""
  out = {}
  for name in sorted(os.listdir(output)):
    if ".array_record-" in name:
      path = os.path.join(output, name)
      with open(path, "rb") as f:
        out[name] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
  return out


def test_build_dataset_builds_each_split_and_publishes_artifacts(images, api):
  params, state = images
  assert state.is_completed(), state.message
  summaries = state.result()
  assert list(summaries) == ["train", "test"]
  meta = read_json(os.path.join(params["output"], "metadata.json"))
  assert meta["splits"]["train"]["num_examples"] == 24 and meta["splits"]["train"]["num_failed"] == 2
  assert meta["splits"]["test"]["num_examples"] == 6 and meta["splits"]["test"]["num_failed"] == 0
  assert meta["config"]["image_short_side"] == 32  # the options reached the build

  found = api.artifacts(state.state_details.flow_run_id)
  table = found["build-images"]
  assert [(r["split"], r["examples"], r["failed"], r["shards"], r["this run"]) for r in table] == [
      ("train", 24, 2, 2, "built"), ("test", 6, 0, 2, "built")]
  failures = found["build-images-failures"]
  # the failure reasons, grouped across inputs, and the failed inputs themselves
  # `<image>` escaped: the UI's markdown renderer would drop it as an HTML tag
  assert "| read | cannot read &lt;image>: No such file or directory | 1 |" in failures
  assert "| manifest | line &lt;n> is not valid JSON" in failures
  assert "## test: 0 of 6 inputs failed" in failures
  # the task's log lines reach the server
  assert "[train]: 24 examples, 2 failed, 2 shard(s) in" in api.logs(state.state_details.flow_run_id)


def test_build_dataset_attaches_the_dataset_card(images, api):
  import base64
  import io
  import re

  from PIL import Image
  params, state = images
  page = os.path.join(params["output"], "card.html")
  with open(page, encoding="utf-8") as f:
    assert "Dataset card: images" in f.read()
  found = api.artifacts(state.state_details.flow_run_id)["build-images-card"]
  assert f"`{page}`" in found and f"(file://{page})" in found
  # the build's own artifact, the table of splits, links it too
  [table] = api.post("/artifacts/filter", {"artifacts": {"key": {"any_": ["build-images"]}},
                                           "flow_runs": {"id": {"any_": [
                                               str(state.state_details.flow_run_id)]}}})
  assert f"Its dataset card: `{page}` ([open it](file://{page}))." in table["description"]
  assert "## train: 24 examples, 2 failed" in found and "## test: 6 examples, 0 failed" in found
  # each split's contact sheet inline, a picture of the same size as the card's PNG
  sheets = re.findall(r"!\[contact sheet of (\w+)\]\(data:image/jpeg;base64,([^)]+)\)", found)
  assert sorted(split for split, _ in sheets) == ["test", "train"]
  for split, data in sheets:
    inline = Image.open(io.BytesIO(base64.b64decode(data)))
    assert inline.size == Image.open(os.path.join(params["output"], "card",
                                                  f"{split}-contact-sheet.png")).size


def test_an_unchanged_rebuild_is_served_from_the_cache(images, api):
  from impax.flows.build import build_dataset
  params, _ = images
  before = shard_digests(params["output"])
  state = build_dataset(**params, return_state=True)
  assert state.is_completed(), state.message
  runs = {name: r["state"]["name"] for name, r in api.task_runs(state.state_details.flow_run_id).items()}
  assert runs["build train"] == "Cached" and runs["build test"] == "Cached"
  assert shard_digests(params["output"]) == before  # nothing was written again
  table = api.artifacts(state.state_details.flow_run_id)["build-images"]
  assert [r["this run"] for r in table] == ["from cache", "from cache"]

  # A cached result does not stand in for a dataset that is gone: it is built again,
  # to the same bytes.
  shutil.rmtree(params["output"])
  state = build_dataset(**params, return_state=True)
  assert state.is_completed(), state.message
  runs = {name: r["state"]["name"] for name, r in api.task_runs(state.state_details.flow_run_id).items()}
  assert runs["build train"] == "Completed" and runs["build test"] == "Completed"
  assert {k: v[0] for k, v in shard_digests(params["output"]).items()} == {
      k: v[0] for k, v in before.items()}


def test_a_damaged_shard_is_rebuilt_not_served_from_the_cache(images, api):
  from impax.flows.build import build_dataset
  params, _ = images
  before = shard_digests(params["output"])
  gone = sorted(n for n in before if "-train.array_record-" in n)[0]
  os.remove(os.path.join(params["output"], gone))
  state = build_dataset(**params, return_state=True)
  assert state.is_completed(), state.message
  runs = {name: r["state"]["name"] for name, r in api.task_runs(state.state_details.flow_run_id).items()}
  assert runs["build train"] == "Completed" and runs["build test"] == "Cached"
  assert {k: v[0] for k, v in shard_digests(params["output"]).items()} == {
      k: v[0] for k, v in before.items()}


FLAKY_SPEC = '''
import os
from impax.datasets import registry
from impax.datasets.specs import jsonl

def read(path):
  # Storage that fails the first time it is read, as a network filesystem can.
  if not os.path.exists(MARKER):
    open(MARKER, "w").close()
    raise OSError("storage unreachable")
  yield from jsonl.read(path)

SPEC = registry.register(registry.DatasetSpec(name="flaky_jsonl", read=read))
'''


def test_a_failing_split_build_is_retried(image_corpus, api, tmp_path):
  from impax.flows.build import build_dataset
  spec = tmp_path / "flaky_spec.py"
  spec.write_text(f"MARKER = {str(tmp_path / 'read-once')!r}\n" + FLAKY_SPEC)
  output = tmp_path / "flaky"
  state = build_dataset(spec=str(spec), output=str(output), workers=1, retry_delay_seconds=0.5,
                        splits=[{"name": "train", "input": image_corpus["clean-train"]}],
                        options={"image_short_side": 32}, return_state=True)
  assert state.is_completed(), state.message
  assert api.task_runs(state.state_details.flow_run_id)["build train"]["run_count"] == 2
  assert "storage unreachable" in api.logs(state.state_details.flow_run_id)
  assert read_json(output / "metadata.json")["splits"]["train"]["num_examples"] == 24


def test_build_dataset_runs_on_the_runner_beam_options_name(images, api, tmp_path):
  """A scheduled build on a cluster: here Beam's portable runner and its job service, as
  `impax engine portable start` brings them up; the bytes are the DirectRunner's."""
  from impax.flows.build import build_dataset
  from impax.pipelines import engine
  from impax.pipelines.build import BuildError
  params, _ = images
  output = tmp_path / "portable" / os.path.basename(params["output"])
  cluster = engine.start("portable", str(tmp_path / "engine"))
  try:
    state = build_dataset(**{**params, "output": str(output)}, beam_options=cluster["beam_options"],
                          return_state=True)
  finally:
    engine.stop("portable", cluster["dir"])
  assert state.is_completed(), state.message
  digests = lambda d: {name: sha for name, (sha, _) in shard_digests(d).items()}
  assert digests(output) == digests(params["output"]) and len(digests(output)) == 4
  with pytest.raises(BuildError, match=r"unknown Beam pipeline option.*--num_wrkers=3"):
    build_dataset(**{**params, "output": str(tmp_path / "other")}, beam_options=["--num_wrkers=3"])


def test_bad_parameters_are_refused_with_the_field_named(image_corpus, prefect_server, tmp_path):
  from prefect.exceptions import ParameterTypeError

  from impax.flows.build import build_dataset
  from impax.pipelines.build import BuildError
  good = {"spec": "jsonl", "output": str(tmp_path / "out"),
          "splits": [{"name": "train", "input": image_corpus["clean-train"]}]}
  with pytest.raises(ParameterTypeError, match=r"splits\.0\.name"):
    build_dataset(**{**good, "splits": [{"name": "no spaces", "input": image_corpus["test"]}]})
  with pytest.raises(ParameterTypeError, match=r"options\.video_fps"):
    build_dataset(**good, options={"video_fps": "fast"})
  with pytest.raises(ParameterTypeError, match=r"workers"):
    build_dataset(**good, workers=0)
  # Checked before any build runs: the option's own rule, a missing input, a repeated split.
  with pytest.raises(BuildError, match=r"jpeg_quality=200 must be between 1 and 95"):
    build_dataset(**good, options={"jpeg_quality": 200})
  with pytest.raises(BuildError, match=r"input .*missing\.jsonl does not exist"):
    build_dataset(**{**good, "splits": [{"name": "train", "input": str(tmp_path / "missing.jsonl")}]})
  with pytest.raises(BuildError, match=r"splits: each split name once"):
    build_dataset(**{**good, "splits": good["splits"] * 2})
  assert not os.path.exists(tmp_path / "out" / "metadata.json")


def test_a_second_build_into_a_held_output_and_a_build_that_wrote_nothing_are_refused(
    image_corpus, api, tmp_path):
  """A double click in the UI: the second run ends Failed naming the first, and is not
  retried; a split whose every input failed ends Failed with the reasons."""
  import subprocess
  import sys

  from impax.flows.build import build_dataset
  output = tmp_path / "held"
  params = {"spec": "jsonl", "output": str(output), "retry_delay_seconds": 0.1,
            "splits": [{"name": "train", "input": image_corpus["clean-train"]}],
            "options": {"image_short_side": 32}}
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys; from impax.pipelines import lock\n"
       "with lock.locked(sys.argv[1]):\n  print('held', flush=True); sys.stdin.read()",
       str(output)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline() == b"held\n"
    state = build_dataset(**params, return_state=True)
  finally:
    holder.kill()
    holder.wait()
  assert state.is_failed()
  assert "is being built by impax build on host" in state.message
  assert f"pid {holder.pid}" in state.message
  dead = tmp_path / "dead.jsonl"
  dead.write_text("".join(json.dumps({"id": str(i), "image": f"gone-{i}.png"}) + "\n"
                          for i in range(3)))
  state = build_dataset(**{**params, "output": str(tmp_path / "dead"),
                           "splits": [{"name": "train", "input": str(dead)}]}, return_state=True)
  assert state.is_failed() and "no example was written, all 3 input(s) failed" in state.message
  assert api.task_runs(state.state_details.flow_run_id)["build train"]["run_count"] == 1
  assert not (tmp_path / "dead" / "metadata.json").exists()
