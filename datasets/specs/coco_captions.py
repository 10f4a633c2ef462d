"""`coco-captions`: COCO's captions JSON (captions_train2017.json, captions_val2014.json, ...).

    {"images": [{"id": 9, "file_name": "000000000009.jpg", "height": 480, "width": 640, ...}],
     "annotations": [{"image_id": 9, "id": 48, "caption": "A plate of food."}, ...], ...}

`--input` is `coco/annotations/captions_<set>.json`; the images are
`coco/<set>/<file_name>`, as COCO unpacks. Each image is one example with all
its captions (five or more), in the file's order; its id is the image id.
"""

import re

from impax.datasets import files, registry
from impax.datasets.specs import _csv, _join


def _image_folder(path: str) -> str:
  name = path.rstrip("/").rsplit("/", 1)[-1]
  m = re.fullmatch(r"captions_(.+)\.json", name)
  if not m:
    raise ValueError(f"{path}: name the file as COCO does, captions_<set>.json (e.g. "
                     "captions_train2017.json), with its images in <set>/ beside annotations/")
  return files.join(registry.corpus_root(path), m[1])


def _load(path: str) -> dict:
  data = _csv.load_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise ValueError(f"{path}: a COCO captions file is an object whose 'images' is a list")
  if not isinstance(data.get("annotations", []), list):
    raise ValueError(f"{path}: 'annotations' must be a list")
  return data


def check(path: str, split: str):
  _image_folder(path)
  _load(path)


def read(path: str):
  folder = _image_folder(path)
  data = _load(path)
  images, annotations = data["images"], data.get("annotations", [])
  known = {im["id"] for im in images if isinstance(im, dict) and isinstance(im.get("id"), int)}
  captions = yield from _join.captions_by_id(
      path, "annotations", annotations, id_key="image_id", id_type=int, known=known,
      media_field="images", first_index=len(images),
      requirement="an integer 'image_id' and a 'caption' string")
  for i, im in enumerate(images):
    source = f"{path}:images[{i}]"
    if not (isinstance(im, dict) and isinstance(im.get("id"), int)
            and isinstance(im.get("file_name"), str) and im["file_name"]):
      yield registry.BadEntry(i, source, f"images[{i}] must have an integer 'id' and a "
                              "'file_name' string")
      continue
    yield registry.Entry(index=i, source=source, id=str(im["id"]),
                         media={"image": files.join(folder, im["file_name"])},
                         captions=tuple(captions.get(im["id"], ())))


SPEC = registry.register(registry.DatasetSpec(
    name="coco-captions", read=read, check=check,
    description="COCO captions JSON (images, annotations): several captions per image; "
                "images in <set>/ beside annotations/."))
