"""Each official corpus format, as released, builds with `impax build SPEC`: its fixture is
in that exact layout, with tiny media made by ffmpeg and Pillow. Bad rows and missing clips are
counted failures with their reasons; every good example is written; the tasks follow the corpus."""

import json
import os
import shutil
import subprocess

import pytest
from PIL import Image

from impax.datasets import registry
from impax.pipelines import build
from impax.pipelines.tools import ffmpeg_binary

SMALL = {"video_short_side": 32, "image_short_side": 32, "video_fps": 4.0, "vocab_size": 64}


def ffmpeg(*args):
  subprocess.run([ffmpeg_binary(), "-v", "error", "-y", *args], check=True, timeout=60)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  """One tiny clip of each kind, copied into every layout below."""
  d = tmp_path_factory.mktemp("media")
  ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=8", "-f", "lavfi", "-i",
         "sine=frequency=440:sample_rate=16000", "-t", "1", "-c:v", "libx264", "-c:a", "aac",
         "-pix_fmt", "yuv420p", str(d / "clip.mp4"))
  ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=22050", "-t", "0.5", str(d / "tone.wav"))
  Image.new("RGB", (48, 40), (200, 30, 30)).save(d / "red.jpg")
  Image.new("RGB", (40, 48), (30, 30, 200)).save(d / "blue.png")
  return d


def place(src, *dest):
  os.makedirs(os.path.dirname(os.path.join(*map(str, dest))), exist_ok=True)
  shutil.copy(src, os.path.join(*map(str, dest)))


def run_build(spec, input_path, output, split="train", **settings):
  plan = build.prepare(spec, str(input_path), str(output), split, ({**SMALL, **settings},))
  summary = build.run(plan, workers=1)
  with open(os.path.join(output, "metadata.json")) as f:
    meta = json.load(f)
  with open(os.path.join(output, f"failures-{split}.jsonl")) as f:
    failures = [json.loads(line) for line in f]
  return summary, meta, failures


def task_names(meta):
  return {t["name"]: t for t in meta["tasks"]}


def read_ids(output, meta, split="train"):
  from array_record.python.array_record_module import ArrayRecordReader
  from impax.datasets import records
  ids = []
  for shard in meta["splits"][split]["shards"]:
    reader = ArrayRecordReader(os.path.join(output, shard["path"]))
    for record in reader.read_all():
      ids.append(records.Example.FromString(record).features.feature["id"].bytes_list.value[0].decode())
    reader.close()
  return ids


def test_every_official_format_is_registered():
  for name in ("kinetics", "esc50", "audioset", "msrvtt", "cc3m", "coco-captions", "imagefolder"):
    assert name in registry.names() and registry.get(name).description
  assert registry.names()[0] == "jsonl"  # the generic manifest is listed first


def test_kinetics(media, tmp_path):
  k400 = tmp_path / "k400"
  (k400 / "annotations").mkdir(parents=True)
  (k400 / "annotations" / "train.csv").write_text(
      "label,youtube_id,time_start,time_end,split\n"
      "abseiling,--07WQ2iBlw,1,11,train\n"
      '"punching person (boxing)",0Dz3RHxWVas,30,40,train\n'
      "air drumming,gone0000000,5,15,train\n"  # left YouTube: no clip
      "abseiling,abcdefghijk,x,11,train\n")
  place(media / "clip.mp4", k400, "train", "--07WQ2iBlw_000001_000011.mp4")
  place(media / "clip.mp4", k400, "train", "0Dz3RHxWVas_000030_000040.mp4")
  summary, meta, failures = run_build("kinetics", k400 / "annotations" / "train.csv",
                                      tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (2, 2)
  assert read_ids(tmp_path / "out", meta) == ["--07WQ2iBlw_000001_000011", "0Dz3RHxWVas_000030_000040"]
  missing, bad = failures
  assert missing["stage"] == "read" and "gone0000000_000005_000015.mp4" in missing["error"]
  assert "No such file" in missing["error"] and missing["source"].endswith("train.csv:4")
  assert bad["stage"] == "manifest" and "line 5: time_start must be a whole number" in bad["error"]
  assert meta["labels"] == ["abseiling", "air drumming", "punching person (boxing)"]
  tasks = task_names(meta)
  assert set(tasks) == {"video_classification", "video_text", "video_audio"}
  assert tasks["video_text"]["prompt"] == "a video of {label}."

  (k400 / "annotations" / "wrong.csv").write_text("filename,fold\n1.wav,1\n")
  with pytest.raises(build.BuildError, match=r"wrong.csv:1: the header has no column youtube_id"):
    build.prepare("kinetics", str(k400 / "annotations" / "wrong.csv"), str(tmp_path / "x"))


ESC50_ROWS = [
    ("1-100032-A-0.wav", 1, 0, "dog", "True", "100032", "A"),
    ("1-115545-A-48.wav", 1, 48, "fireworks", "False", "115545", "A"),
    ("2-102414-A-17.wav", 2, 17, "pouring water", "False", "102414", "A"),
    ("4-181286-A-10.wav", 4, 10, "rain", "True", "181286", "A"),
    ("5-103415-A-2.wav", 5, 2, "pig", "False", "103415", "A"),
    ("5-200334-A-1.wav", 5, 1, "rooster", "True", "200334", "A"),
]


def test_esc50_with_its_folds(media, tmp_path):
  root = tmp_path / "ESC-50-master"
  lines = ["filename,fold,target,category,esc10,src_file,take"]
  for row in ESC50_ROWS:
    lines.append(",".join(map(str, row)))
    place(media / "tone.wav", root, "audio", row[0])
  lines.insert(3, "3-bad.wav,three,0,dog,True,1,A")  # line 4
  (root / "meta").mkdir()
  (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
  csv_path = str(root / "meta" / "esc50.csv")
  spec = registry.get("esc50")
  fold5 = [e.id for e in spec.read_entries(csv_path, "fold5")]
  assert fold5 == ["", "5-103415-A-2.wav", "5-200334-A-1.wav"]  # the bad line, and fold 5
  summary, meta, failures = run_build("esc50", csv_path, tmp_path / "out", split="fold1234",
                                      num_shards=2)
  assert summary["num_examples"] == 4
  assert read_ids(tmp_path / "out", meta, "fold1234") == [r[0] for r in ESC50_ROWS[:4]]
  assert [s["num_records"] for s in meta["splits"]["fold1234"]["shards"]] == [2, 2]
  assert len(failures) == 1 and "line 4: fold must be a fold number" in failures[0]["error"]
  assert meta["labels"] == ["dog", "fireworks", "pouring water", "rain"]
  tasks = task_names(meta)
  assert set(tasks) == {"audio_classification", "audio_text"}
  assert not tasks["audio_classification"]["multi_label"]


def test_audioset_multi_label_with_ontology_names(media, tmp_path):
  root = tmp_path / "audioset"
  root.mkdir()
  (root / "ontology.json").write_text(json.dumps([
      {"id": "/m/09x0r", "name": "Speech", "description": "", "citation_uri": "",
       "positive_examples": [], "child_ids": [], "restrictions": []},
      {"id": "/t/dd00088", "name": "Gush", "child_ids": []},
      {"id": "/m/0jbk", "name": "Animal", "child_ids": []},
      {"id": "/m/068hy", "name": "Domestic animals, pets", "child_ids": []},
  ]))
  (root / "balanced_train_segments.csv").write_text(
      "# Segments csv created Sun Mar  5 10:54:31 2017\n"
      "# num_ytids=5, num_segs=5, num_unique_labels=4, num_positive_labels=7\n"
      "# YTID, start_seconds, end_seconds, positive_labels\n"
      '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
      '--ZhevVpy1s, 50.000, 60.000, "/m/0jbk,/m/068hy"\n'
      '--aE2O5G5WE, 0.000, 10.000, "/m/09x0r"\n'
      '--aO5cdqSAg, 30.000, 40.000, "/m/nope"\n'
      '--gone00000, 30.000, 40.000, "/m/0jbk"\n')
  for name in ("--PJHxphWEs_30.000_40.000", "--ZhevVpy1s_50.000_60.000", "--aE2O5G5WE_0.000_10.000"):
    place(media / "tone.wav", root, "balanced_train_segments", name + ".wav")
  summary, meta, failures = run_build("audioset", root / "balanced_train_segments.csv",
                                      tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (3, 2)
  assert meta["labels"] == ["Animal", "Domestic animals, pets", "Gush", "Speech"]
  unknown, missing = failures
  assert "line 7: label id(s) /m/nope are not in ontology.json" in unknown["error"]
  assert missing["stage"] == "read" and missing["source"].endswith("segments.csv:8")
  tasks = task_names(meta)
  assert tasks["audio_classification"]["multi_label"]
  assert tasks["audio_text"]["prompt"] == "the sound of {label}."
  os.remove(root / "ontology.json")
  with pytest.raises(build.BuildError, match="put it beside"):
    build.prepare("audioset", str(root / "balanced_train_segments.csv"), str(tmp_path / "x"))


def test_msrvtt_several_captions_per_video(media, tmp_path):
  root = tmp_path / "MSRVTT"
  videos = [{"category": 9, "url": "https://www.youtube.com/watch?v=9lZi22qLlEo",
             "video_id": f"video{i}", "start time": 137.72, "end time": 149.44,
             "split": split, "id": i} for i, split in enumerate(["train", "train", "validate"])]
  sentences = [{"caption": f"{what} number {i}", "video_id": f"video{i}", "sen_id": 3 * i + k}
               for i in range(3) for k, what in enumerate(["a car drives", "a man talks", "a dog runs"])]
  sentences.append({"caption": "an orphan", "video_id": "video99", "sen_id": 99})
  root.mkdir()
  (root / "train_val_videodatainfo.json").write_text(json.dumps(
      {"info": {"contributor": "Microsoft MSM group", "year": "2016"}, "videos": videos,
       "sentences": sentences}))
  for i in (0, 2):  # video1 is missing
    place(media / "clip.mp4", root, "TrainValVideo", f"video{i}.mp4")
  summary, meta, failures = run_build("msrvtt", root / "train_val_videodatainfo.json",
                                      tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (1, 2)
  assert read_ids(tmp_path / "out", meta) == ["video0"]
  assert meta["splits"]["train"]["statistics"]["text/captions_per_example"]["mean"] == 3
  assert {f["stage"] for f in failures} == {"read", "manifest"}
  assert any("names video_id 'video99'" in f["error"] for f in failures)
  assert set(task_names(meta)) == {"video_text", "video_audio"}
  val = list(registry.get("msrvtt").read_entries(str(root / "train_val_videodatainfo.json"), "val"))
  assert [e.id for e in val if isinstance(e, registry.Entry)] == ["video2"]
  with pytest.raises(build.BuildError, match="has no video of split 'test'"):
    build.prepare("msrvtt", str(root / "train_val_videodatainfo.json"), str(tmp_path / "x"), "test")


def test_cc3m_tsv(media, tmp_path):
  root = tmp_path / "cc3m"
  place(media / "red.jpg", root, "images", "00000001.jpg")
  place(media / "blue.png", root, "images", "00000002.png")
  (root / "train.tsv").write_text(
      "a red square on a white wall\timages/00000001.jpg\n"
      "a blue tile\timages/00000002.png\n"
      "no tab here images/3.jpg\n"
      "\timages/00000001.jpg\n")
  summary, meta, failures = run_build("cc3m", root / "train.tsv", tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (2, 2)
  assert read_ids(tmp_path / "out", meta) == ["images/00000001.jpg", "images/00000002.png"]
  assert "line 3 has 1 tab-separated fields, expected 2" in failures[0]["error"]
  assert "line 4: the caption (field 1) is empty" in failures[1]["error"]
  assert set(task_names(meta)) == {"image_text"}


def test_coco_captions(media, tmp_path):
  coco = tmp_path / "coco"
  images = [{"license": 4, "file_name": "000000000009.jpg", "coco_url": "", "height": 40,
             "width": 48, "date_captured": "2013-11-14 17:02:52", "flickr_url": "", "id": 9},
            {"license": 1, "file_name": "000000000025.jpg", "height": 40, "width": 48, "id": 25},
            {"license": 1, "file_name": 7, "id": 30}]
  annotations = [{"image_id": 9, "id": 48 + k, "caption": f"A plate of food {k}."} for k in range(5)]
  annotations += [{"image_id": 25, "id": 90 + k, "caption": f"A giraffe eating {k}."} for k in range(5)]
  (coco / "annotations").mkdir(parents=True)
  (coco / "annotations" / "captions_val2017.json").write_text(json.dumps(
      {"info": {}, "licenses": [], "images": images, "annotations": annotations}))
  place(media / "red.jpg", coco, "val2017", "000000000009.jpg")
  place(media / "red.jpg", coco, "val2017", "000000000025.jpg")
  summary, meta, failures = run_build("coco-captions", coco / "annotations" / "captions_val2017.json",
                                      tmp_path / "out", split="val")
  assert (summary["num_examples"], summary["num_failed"]) == (2, 1)
  assert read_ids(tmp_path / "out", meta, "val") == ["9", "25"]
  assert meta["splits"]["val"]["statistics"]["text/captions_per_example"]["mean"] == 5
  assert "images[2] must have an integer 'id' and a 'file_name'" in failures[0]["error"]
  assert set(task_names(meta)) == {"image_text"}
  (coco / "annotations" / "captions.json").write_text("{}")
  with pytest.raises(build.BuildError, match="captions_<set>.json"):
    build.prepare("coco-captions", str(coco / "annotations" / "captions.json"), str(tmp_path / "x"))


def test_imagefolder(media, tmp_path):
  root = tmp_path / "pets"
  place(media / "red.jpg", root, "cat", "a.jpg")
  place(media / "blue.png", root, "dog", "b.png")
  place(media / "red.jpg", root, "dog", "c.jpg")
  place(media / "red.jpg", root, "stray.jpg")
  (root / "cat" / ".DS_Store").write_bytes(b"\0")
  summary, meta, failures = run_build("imagefolder", root, tmp_path / "out")
  assert (summary["num_examples"], summary["num_failed"]) == (3, 1)
  assert read_ids(tmp_path / "out", meta) == ["cat/a.jpg", "dog/b.png", "dog/c.jpg"]
  assert "stray.jpg is not in a class folder" in failures[0]["error"]
  assert meta["labels"] == ["cat", "dog"]
  assert set(task_names(meta)) == {"image_classification", "image_text"}
