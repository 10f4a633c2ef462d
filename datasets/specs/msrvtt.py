"""`msrvtt`: MSR-VTT's JSON (train_val_videodatainfo.json, test_videodatainfo.json).

    {"info": {...},
     "videos": [{"video_id": "video0", "category": 9, "split": "train", "id": 0, ...}, ...],
     "sentences": [{"caption": "a man is driving a car", "video_id": "video0", "sen_id": 0}, ...]}

`--input` is the JSON; the videos are `TrainValVideo/<video_id>.mp4` beside it
(`TestVideo/` for videos of the test split), as the release unpacks. Each video
is one example with all its captions (20 in MSR-VTT). `--split train`,
`validate` (or `val`) and `test` take the videos of that split (refused when the
file has none); any other split name takes every video of the file. Videos are already cut to their clip.
"""

from impax.datasets import files, registry
from impax.datasets.specs import _csv, _join

SPLITS = {"train": "train", "val": "validate", "validate": "validate", "validation": "validate",
          "test": "test"}


def _load(path: str) -> dict:
  data = _csv.load_json(path)
  if not isinstance(data, dict):
    raise ValueError(f"{path} holds a JSON {type(data).__name__}: MSR-VTT's file is an object "
                     "with 'videos' and 'sentences'")
  for key in ("videos", "sentences"):
    if not isinstance(data.get(key), list):
      raise ValueError(f"{path}: '{key}' must be a list, as in MSR-VTT's train_val_videodatainfo.json")
  return data


def _wanted(data: dict, split: str, path: str) -> str | None:
  """The `split` value of the videos to take, or None for every video."""
  present = sorted({v["split"] for v in data["videos"]
                    if isinstance(v, dict) and isinstance(v.get("split"), str)})
  want = SPLITS.get(split)
  if not want or not present:
    return None
  if want not in present:
    raise ValueError(f"{path} has no video of split {want!r} (its splits: {', '.join(present)}): "
                     "build another split name, or the file that holds it")
  return want


def check(path: str, split: str):
  _wanted(_load(path), split, path)


def read(path: str, split: str = "train"):
  data = _load(path)
  videos, sentences = data["videos"], data["sentences"]
  want = _wanted(data, split, path)
  known = {v["video_id"] for v in videos if isinstance(v, dict) and isinstance(v.get("video_id"), str)}
  captions = yield from _join.captions_by_id(
      path, "sentences", sentences, id_key="video_id", id_type=str, known=known,
      media_field="videos", first_index=len(videos),
      requirement="'video_id' and 'caption' strings")
  root = registry.corpus_root(path)
  for i, v in enumerate(videos):
    source = f"{path}:videos[{i}]"
    if not isinstance(v, dict) or not isinstance(v.get("video_id"), str) or not v["video_id"] \
        or "/" in v["video_id"]:
      yield registry.BadEntry(i, source, f"videos[{i}] must have a 'video_id' string like "
                              "\"video0\", naming <video_id>.mp4")
      continue
    if want and v.get("split") != want:
      continue
    folder = "TestVideo" if v.get("split") == "test" else "TrainValVideo"
    yield registry.Entry(index=i, source=source, id=v["video_id"],
                         media={"video": files.join(root, folder, v["video_id"] + ".mp4")},
                         captions=tuple(captions.get(v["video_id"], ())))


SPEC = registry.register(registry.DatasetSpec(
    name="msrvtt", read=read, check=check,
    description="MSR-VTT JSON (videos, sentences): several captions per video; videos in "
                "TrainValVideo/ or TestVideo/."))
