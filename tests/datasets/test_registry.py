"""The spec registry: names, spec files a user writes, the jsonl manifest's rules."""

import json

import pytest

from impax.datasets import metadata, registry
from impax.datasets.specs import jsonl
from impax.pipelines import build


def test_builtin_specs_are_registered_by_name():
  assert "jsonl" in registry.names()
  assert registry.get("jsonl").read is jsonl.read
  with pytest.raises(ValueError, match="unknown dataset spec 'kinetix'.*jsonl"):
    registry.get("kinetix")


def test_jsonl_lines():
  parse = lambda obj: jsonl.parse_line("/data/m.jsonl", 7, json.dumps(obj).encode())
  e = parse({"video": "a b/c.mp4", "labels": ["x", "y"], "captions": ["one", "two"],
             "start": 1, "end": 2.5})
  assert e.media == {"video": "/data/a b/c.mp4"} and e.labels == ("x", "y")
  assert (e.start, e.end, e.index, e.source) == (1.0, 2.5, 6, "/data/m.jsonl:7")
  assert e.id == "a b/c.mp4@1-2.5"  # default id: media path and clip bounds
  assert parse({"image": "gs://b/i.png", "id": 5}).media == {"image": "gs://b/i.png"}
  assert parse({"image": "gs://b/i.png", "id": 5}).id == "5"
  assert parse({"audio": "/abs/x.wav"}).media == {"audio": "/abs/x.wav"}
  remote = jsonl.parse_line("s3://bucket/m/x.jsonl", 1, b'{"video": "v/1.mp4"}')
  assert remote.media == {"video": "s3://bucket/m/v/1.mp4"}
  assert jsonl.parse_line("/m.jsonl", 3, b"   \n") is None
  for obj, message in [
      ({"video": ""}, "'video' must be a non-empty path"),
      ({"video": "a", "labels": "x"}, "'labels' must be a list"),
      ({"video": "a", "labels": ["x", 3]}, "every item of 'labels' must be a string"),
      ({"video": "a", "start": -1}, "'start' must be a non-negative number"),
      ({"video": "a", "end": True}, "'end' must be a non-negative number"),
      ({"video": "a", "id": [1]}, "'id' must be a string or an integer"),
  ]:
    bad = parse(obj)
    assert isinstance(bad, registry.BadEntry) and message in bad.error and "line 7" in bad.error


def test_default_tasks_follow_what_the_corpus_holds():
  names = lambda **c: [t.name for t in registry.default_tasks(metadata.Composition(**c))]
  assert names(video=5, video_with_audio=3, labels=5) == [
      "video_classification", "video_text", "video_audio"]
  assert names(image=4, captions=4) == ["image_text"]
  tasks = registry.default_tasks(metadata.Composition(audio=4, labels=4, multi_label=2))
  assert tasks[0].multi_label and tasks[1].prompt == "the sound of {label}."


SPEC_FILE = '''
import csv
from impax.datasets import registry

def read(path):
  with open(path, newline="") as f:
    for i, row in enumerate(csv.DictReader(f)):
      if not row["file"]:
        yield registry.BadEntry(i, f"{path}:{i + 2}", "no file", stage="read")
        continue
      yield registry.Entry(index=i, source=f"{path}:{i + 2}", id=row["key"],
                           media={"image": row["file"]}, labels=(row["class"],))

SPEC = registry.register(registry.DatasetSpec(
    name="my_csv", read=read, settings={"image_short_side": 16}))
'''


def test_a_spec_file_builds_on_multiprocess_workers(tmp_path):
  from PIL import Image
  spec = tmp_path / "my_spec.py"
  spec.write_text(SPEC_FILE)
  rows = ["key,file,class"]
  for i, colour in enumerate(["red", "green", "blue"]):
    Image.new("RGB", (40, 30), colour).save(tmp_path / f"{colour}.png")
    rows.append(f"k{i},{tmp_path / colour}.png,{colour}")
  rows.append("k3,,none")
  (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
  plan = build.prepare(str(spec), str(tmp_path / "index.csv"), str(tmp_path / "out"))
  summary = build.run(plan, workers=1)
  assert (summary["num_examples"], summary["num_failed"]) == (3, 1)
  with open(tmp_path / "out" / "metadata.json") as f:
    meta = json.load(f)
  assert meta["spec"] == "my_csv" and meta["config"]["image_short_side"] == 16
  assert meta["labels"] == ["blue", "green", "red"]
  assert meta["splits"]["train"]["statistics"]["image/resolution"] == {"16x21": 3}
  with open(tmp_path / "out" / "failures-train.jsonl") as f:
    failure = json.loads(f.readline())
  assert failure["stage"] == "read" and failure["source"].endswith("index.csv:5")


def test_spec_file_errors(tmp_path):
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(ValueError, match="must define SPEC"):
    registry.get(str(tmp_path / "empty.py"))
  (tmp_path / "broken.py").write_text("def read(:\n")
  with pytest.raises(ValueError, match="broken.py failed to load: SyntaxError"):
    registry.get(str(tmp_path / "broken.py"))
  with pytest.raises(ValueError, match="does not exist"):
    registry.get(str(tmp_path / "missing.py"))
