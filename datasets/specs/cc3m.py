"""`cc3m` and `cc12m`: Conceptual Captions' TSVs as released, one image a line, no header.

    a very typical bus station<TAB>http://example.com/bus-station.jpg      (cc3m)
    http://example.com/bus-station.jpg<TAB>a very typical bus station      (cc12m)

`--input` is the TSV. The image is a URL (downloaded as the example is processed), a
path relative to the TSV's folder, an absolute path or a URI (gs://, s3://). The
example's id is the URL or path as written: CC3M has no ids. The same URL on two lines
is one image, so the second line is a `duplicate` failure naming the first.

A TSV in the other order is refused before the build runs: each spec checks that its
first line's image field, not its caption, looks like a URL or a file name.
"""

import re

from impax.datasets import registry
from impax.datasets.specs import _csv, jsonl

# A URL, or a path ending in a file name with an extension: what an image field looks like.
_IMAGE = re.compile(r"(?i)^(https?://\S+|\S+\.[a-z0-9]{2,5})$")


def _fields(number: int, raw: bytes, order: str) -> tuple[str, str] | None:
  """(caption, image) of a line, None for a blank line; LineError for a bad one."""
  line = _csv.text(number, raw)
  if not line.strip():
    return None
  fields = line.split("\t")
  if len(fields) != 2:
    raise _csv.LineError(f"line {number} has {len(fields)} tab-separated fields, expected 2: "
                         f"{order} (a caption may not hold a tab)")
  first, second = (f.strip() for f in fields)
  return (first, second) if order.startswith("caption") else (second, first)


def _format(name: str, order: str, other: str) -> registry.DatasetSpec:
  def parse(path: str, number: int, raw: bytes) -> registry.Entry | registry.BadEntry | None:
    try:
      fields = _fields(number, raw, order)
    except _csv.LineError as e:
      return _csv.bad(path, number, str(e))
    if fields is None:
      return None
    caption, image = fields
    image_field, caption_field = (1, 2) if order.startswith("image") else (2, 1)
    if not caption:
      return _csv.bad(path, number, f"line {number}: the caption (field {caption_field}) is "
                      "empty", image)
    if not image:
      return _csv.bad(path, number, f"line {number}: the image URL or path (field "
                      f"{image_field}) is empty")
    return registry.Entry(index=number - 1, source=f"{path}:{number}", id=image,
                          media={"image": jsonl.resolve_media(path, image)}, captions=(caption,))

  def check(path: str, split: str):
    for number, raw in registry.read_lines(path):
      try:
        fields = _fields(number, raw, order)
      except _csv.LineError:
        return  # a bad first line is that line's failure, not the file's
      if fields is None:
        continue
      caption, image = fields
      if _IMAGE.match(caption) and not _IMAGE.match(image):
        raise ValueError(f"{path}:{number}: the caption field holds {caption[:60]!r} and the "
                         f"image field {image[:60]!r}: {name} reads {order}; this file looks "
                         f"like {other}")
      return

  spec_other = "cc12m" if name == "cc3m" else "cc3m"
  return registry.DatasetSpec(
      name=name, lines=registry.LineFormat(parse=parse), check=check,
      description=f"Conceptual Captions {name.upper()} TSV as released: {order}, no header "
                  f"({spec_other}: the other order).")


SPEC = registry.register(_format("cc3m", "caption<TAB>image URL or path",
                                 "cc12m's url<TAB>caption: build it with cc12m"))
CC12M = registry.register(_format("cc12m", "image URL or path<TAB>caption",
                                  "cc3m's caption<TAB>url: build it with cc3m"))
