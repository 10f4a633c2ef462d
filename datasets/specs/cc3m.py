"""`cc3m`: a Conceptual Captions-style TSV, one image a line, no header.

    a very typical bus station<TAB>images/00000001.jpg

`--input` is the TSV. The image path is relative to the TSV's folder, absolute
or a URI (gs://, s3://); CC3M's released TSV holds URLs, so download the images
first (img2dataset writes such paths). The example's id is the path as written.
"""

from impax.datasets import registry
from impax.datasets.specs import _csv, jsonl


def parse(path: str, number: int, raw: bytes) -> registry.Entry | registry.BadEntry | None:
  try:
    line = _csv.text(number, raw)
  except _csv.LineError as e:
    return _csv.bad(path, number, str(e))
  if not line.strip():
    return None
  fields = line.split("\t")
  if len(fields) != 2:
    return _csv.bad(path, number, f"line {number} has {len(fields)} tab-separated fields, "
                    "expected 2: caption<TAB>image path (a caption may not hold a tab)")
  caption, image = fields[0].strip(), fields[1].strip()
  if not caption:
    return _csv.bad(path, number, f"line {number}: the caption (field 1) is empty", image)
  if not image:
    return _csv.bad(path, number, f"line {number}: the image path (field 2) is empty")
  return registry.Entry(index=number - 1, source=f"{path}:{number}", id=image,
                        media={"image": jsonl.resolve_media(path, image)}, captions=(caption,))


SPEC = registry.register(registry.DatasetSpec(
    name="cc3m", lines=registry.LineFormat(parse=parse),
    description="Conceptual Captions-style TSV: caption<TAB>image path, one image a line."))
