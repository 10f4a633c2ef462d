"""`jsonl`: the generic manifest, one JSON object per line.

    {"id": "clip-1", "video": "videos/a b.mp4", "start": 2.5, "end": 12.5,
     "label": "dancing", "caption": "two people dancing"}

Media keys `video`, `audio`, `image` (at least one) hold a path relative to the
manifest, an absolute path, or a URI of any Beam filesystem (gs://, s3://).
Annotations: `label` (string) or `labels` (list: multi-label), `caption`
(string) or `captions` (list). Optional `start` and `end` in seconds clip the
media, and `id` names the example (default: the media path, plus the clip's
bounds). Other keys are ignored.
"""

import json
import math
import os
import posixpath

from impax.datasets import modalities, registry

_ANNOTATIONS = {"label": str, "labels": list, "caption": str, "captions": list}


def resolve_media(manifest: str, value: str) -> str:
  """A media path as written in a manifest, made absolute against the manifest's folder."""
  if "://" in value or os.path.isabs(value):
    return value
  if "://" in manifest:
    return posixpath.join(manifest.rsplit("/", 1)[0], value)
  return os.path.join(os.path.dirname(os.path.abspath(manifest)), value)


def parse_line(manifest: str, number: int, raw: bytes) -> registry.Entry | registry.BadEntry | None:
  source = f"{manifest}:{number}"
  bad = lambda error, id_="": registry.BadEntry(number - 1, source, error, id_)
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    return bad(f"line {number} is not valid UTF-8 ({e.reason} at byte {e.start})")
  if not text.strip():
    return None  # blank lines are allowed, e.g. a trailing newline
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    return bad(f"line {number} is not valid JSON: {e.msg} at column {e.colno}")
  except (ValueError, RecursionError) as e:  # an integer of 4,300+ digits, arrays nested too deep
    return bad(f"line {number} cannot be read as JSON: {e}")
  if not isinstance(obj, dict):
    return bad(f"line {number} is a JSON {type(obj).__name__}, expected an object")
  for key in ("id", *modalities.MEDIA):
    if isinstance(obj.get(key), str) and not _is_unicode(obj[key]):
      return bad(f"line {number}: '{key}' is not valid Unicode (a lone surrogate escape?)")
  id_ = obj.get("id")
  if id_ is not None and not isinstance(id_, (str, int)):
    return bad(f"line {number}: 'id' must be a string or an integer")
  id_ = "" if id_ is None else str(id_)

  media = {}
  for key in modalities.MEDIA:
    if key in obj:
      value = obj[key]
      if not isinstance(value, str) or not value:
        return bad(f"line {number}: '{key}' must be a non-empty path string", id_)
      media[key] = resolve_media(manifest, value)
  if not media:
    return bad(f"line {number} has no media key: add one of "
               f"{', '.join(modalities.MEDIA)}", id_)

  for key, type_ in _ANNOTATIONS.items():
    if key in obj and not isinstance(obj[key], type_):
      return bad(f"line {number}: '{key}' must be a {type_.__name__}", id_)
  labels = [obj["label"]] if "label" in obj else list(obj.get("labels", []))
  captions = [obj["caption"]] if "caption" in obj else list(obj.get("captions", []))
  for key, values in (("labels", labels), ("captions", captions)):
    if any(not isinstance(v, str) for v in values):
      return bad(f"line {number}: every item of '{key}' must be a string", id_)

  start, end = obj.get("start"), obj.get("end")
  for key, value in (("start", start), ("end", end)):
    if value is not None and _seconds(value) is None:
      # Python's json reads NaN and Infinity: NaN as an end would mean "no end".
      return bad(f"line {number}: '{key}' must be a non-negative number of seconds, and "
                 f"finite, got {json.dumps(value)[:40]}", id_)
  if start is not None and end is not None and end <= start:
    return bad(f"line {number}: 'end' ({end}) must be after 'start' ({start})", id_)

  if not id_:
    id_ = obj[next(k for k in modalities.MEDIA if k in obj)]
    if start is not None or end is not None:
      id_ += f"@{start or 0:g}-{'' if end is None else f'{end:g}'}"
  return registry.Entry(
      index=number - 1, source=source, id=id_, media=media,
      start=None if start is None else _seconds(start), end=None if end is None else _seconds(end),
      labels=tuple(labels), captions=tuple(captions))


def _seconds(value) -> float | None:
  """A clip bound in seconds; None unless a finite, non-negative number."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  try:
    seconds = float(value)
  except OverflowError:  # an integer past a float's range
    return None
  return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _is_unicode(value: str) -> bool:
  try:
    value.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


FORMAT = registry.LineFormat(parse=parse_line)


def read(path: str):
  for number, raw in registry.read_lines(path):
    if (entry := FORMAT.entry(path, path, number, raw)) is not None:
      yield entry


SPEC = registry.register(registry.DatasetSpec(
    name="jsonl", read=read, lines=FORMAT,
    description="Generic JSONL manifest: one object per line with video/audio/image, "
                "label(s), caption(s), start, end, id."))
