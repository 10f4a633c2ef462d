"""`webvid`: WebVid's CSV as released (results_2M_train.csv, results_10M_val.csv, ...).

    videoid,contentUrl,duration,page_dir,name
    21179416,https://example.com/videos/21179416/preview.mp4,PT00H00M11S,006001_006050,Aerial shot of ...

`--input` is the CSV. The video is `contentUrl`: a URL (downloaded as the example is
processed), or a path relative to the CSV, absolute or a URI. The id is `videoid`, the
caption `name`. `duration` and `page_dir` are not used: the video is read whole, and
its own length is what counts. Extra columns are ignored.
"""

import re

from impax.datasets import registry
from impax.datasets.specs import _csv, jsonl

HEADER = "videoid,contentUrl,duration,page_dir,name"


def context(path: str, header: list[bytes], split: str) -> dict:
  return {"path": path, "columns": _csv.columns(path, header, ("videoid", "contentUrl", "name"), HEADER)}


def parse(ctx: dict, number: int, raw: bytes) -> registry.Entry | registry.BadEntry | None:
  path, columns = ctx["path"], ctx["columns"]
  try:
    row = _csv.row(number, raw, columns, hint=": quote a name that holds a comma")
    if row is None:
      return None
    videoid, url, name = (row[columns[k]].strip() for k in ("videoid", "contentUrl", "name"))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", videoid):
      raise _csv.LineError(f"line {number}: videoid {videoid!r} must be a video id like 21179416")
    if not url:
      raise _csv.LineError(f"line {number}: contentUrl (the video) is empty")
    if not name:
      raise _csv.LineError(f"line {number}: name (the caption) is empty")
  except _csv.LineError as e:
    return _csv.bad(path, number, str(e))
  return registry.Entry(index=number - 1, source=f"{path}:{number}", id=videoid,
                        media={"video": jsonl.resolve_media(path, url)}, captions=(name,))


SPEC = registry.register(registry.DatasetSpec(
    name="webvid", lines=registry.LineFormat(parse=parse, header_lines=1, context=context),
    description="WebVid CSV as released (videoid,contentUrl,duration,page_dir,name): "
                "a video URL and its caption a row."))
