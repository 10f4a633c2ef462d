"""`parquet`: LAION- and DataComp-style metadata, Parquet files of one URL and its caption a row.

    URL                                    TEXT                        (LAION)
    http://example.com/photos/dog.jpg      a dog running on the beach

`--input` is a .parquet file, or a folder: every *.parquet file under it, in path order.
The media is the URL column, `url` in any case (LAION's URL, DataComp's url); a relative
path (after a download) is relative to its file. The caption is the column `caption` or
`text`, in any case. The example's id is the row's place, `<file>:<row>` (the file as
named under the folder, the row counted from 0 in that file), unless an id column is
named. Other columns are ignored. A row without a URL or a caption is a failure naming
its file and row.

Other column names, clip bounds and videos are options of `spec()`, in a spec file:

    # webvid_parquet.py: impax build webvid_parquet.py --input meta/ --output data/webvid
    from impax.datasets.specs import parquet
    SPEC = parquet.spec("webvid_parquet", url="contentUrl", caption="name", id="videoid",
                        medium="video")

The files are read in parallel, one row group a worker: the launcher reads only their
footers, which count each row group's rows, so every row's index is known before any
row is read.
"""

import concurrent.futures
import math
import os

from impax.datasets import files as files_lib
from impax.datasets import modalities, registry
from impax.datasets.specs import jsonl

FOOTER_THREADS = 16
BATCH_ROWS = 4096  # rows decoded at once: a worker holds a batch, never a whole row group
# Column names tried, in any case, for an option left as None.
GUESSES = {"url": ("url",), "caption": ("caption", "text")}


def _open(path: str):
  return files_lib.open(path)


def _is_dir(path: str) -> bool:
  if "://" not in path:
    return os.path.isdir(path)
  return bool(files_lib.match(files_lib.join(path.rstrip("/"), "**"), limit=1))


def files(path: str) -> list[tuple[str, int, float]]:
  """(path, size, modified) of an input's Parquet files: the file itself, or every
  *.parquet under a folder, in path order."""
  if not _is_dir(path):
    return [(path, f.size, f.modified) for f in files_lib.match(path)[:1]] or [(path, -1, 0.0)]
  root = path.rstrip("/") if "://" in path else os.path.abspath(path)
  found = sorted((f.path, f.size, f.modified) for f in files_lib.match(files_lib.join(root, "**"))
                 if f.path.endswith(".parquet") and not os.path.basename(f.path).startswith("."))
  if not found:
    raise ValueError(f"{path} holds no .parquet file: give a Parquet file or a folder of them")
  return found


# (path, size, modified) -> (its column names, its row groups' row counts). A launcher asks
# for the parts several times (the check, the graph, the progress line's total): each file's
# footer is read once while the file is unchanged.
_footers: dict[tuple[str, int, float], tuple[list[str], list[int]]] = {}


def _footer(file: tuple[str, int, float]) -> tuple[list[str], list[int]]:
  import pyarrow as pa  # heavy (0.2 s): only Parquet inputs load it
  import pyarrow.parquet as pq
  if file not in _footers:
    with _open(file[0]) as f:
      try:
        meta = pq.ParquetFile(f)
      except pa.ArrowException as e:
        raise ValueError(f"{file[0]} is not a Parquet file ({e})") from None
      _footers[file] = (meta.schema_arrow.names,
                        [meta.metadata.row_group(g).num_rows for g in range(meta.num_row_groups)])
  return _footers[file]


def _relative(input_path: str, file: str) -> str:
  """A file's name in ids: under a folder input, its path below it; else its own name."""
  if file == input_path:
    return file.rstrip("/").rsplit("/", 1)[-1]
  root = input_path.rstrip("/") if "://" in input_path else os.path.abspath(input_path)
  return file[len(root) + 1:] if file.startswith(root + "/") else file


class Columns:
  """Which column holds what; None for a column that is not read."""

  def __init__(self, url: str | None, caption: str | None, id_: str | None,
               start: str | None, end: str | None, medium: str):
    if medium not in modalities.MEDIA:
      raise ValueError(f"parquet spec: medium={medium!r} must be one of {', '.join(modalities.MEDIA)}")
    self.url, self.caption, self.id, self.start, self.end = url, caption, id_, start, end
    self.medium = medium

  def resolve(self, file: str, names: list[str]) -> dict[str, str]:
    """{role: column name} in a file with these columns; ValueError naming what is missing."""
    found = {}
    for role in ("url", "caption", "id", "start", "end"):
      want = getattr(self, role)
      if want is None and role in GUESSES:
        matches = [n for n in names if n.lower() in GUESSES[role]]
        if len(matches) != 1:
          raise ValueError(
              f"{file}: {'no' if not matches else 'more than one'} {role} column "
              f"(looked for {' or '.join(GUESSES[role])} in any case; found "
              f"{', '.join(names)}): name it in a spec file, SPEC = "
              f"parquet.spec(\"my_corpus\", {role}=\"COLUMN\") (README: Official corpus formats)")
        found[role] = matches[0]
      elif want is not None:
        if want not in names:
          raise ValueError(f"{file}: no column {want!r} (the {role}; found {', '.join(names)})")
        found[role] = want
    return found


def _text(value) -> str | None:
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError:
      return None
  return value.strip() if isinstance(value, str) else None


def _seconds(value):
  """A clip bound from a cell: None for no bound, a float, or ValueError."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) \
      or not math.isfinite(value) or value < 0:
    raise ValueError(f"must be a finite, non-negative number of seconds, got {value!r}")
  return float(value)


def _entry(columns: Columns, roles: dict[str, str], row: dict, index: int, file: str,
           number: int, name: str) -> registry.Entry | registry.BadEntry:
  """The example of row `number` (from 0) of `file`, named `name` in default ids."""
  source = f"{file}:{number}"
  bad = lambda error, id_="": registry.BadEntry(index, source, f"row {number}: {error}", id_)
  id_ = f"{name}:{number}"
  if "id" in roles:
    value = row[roles["id"]]
    id_ = str(value) if isinstance(value, int) and not isinstance(value, bool) else _text(value)
    if not id_:
      return bad(f"the id ({roles['id']}) is empty or not a string")
  url = _text(row[roles["url"]])
  if not url:
    return bad(f"the URL ({roles['url']}) is empty or not a string", id_)
  caption = _text(row[roles["caption"]])
  if not caption:
    return bad(f"the caption ({roles['caption']}) is empty or not a string", id_)
  bounds = {}
  for role in ("start", "end"):
    if role in roles:
      try:
        bounds[role] = _seconds(row[roles[role]])
      except ValueError as e:
        return bad(f"{role} ({roles[role]}) {e}", id_)
  start, end = bounds.get("start"), bounds.get("end")
  if start is not None and end is not None and end <= start:
    return bad(f"end ({end:g}) must be after start ({start:g})", id_)
  return registry.Entry(index=index, source=source, id=id_,
                        media={columns.medium: jsonl.resolve_media(file, url)},
                        start=start, end=end, captions=(caption,))


def spec(name: str = "parquet", *, url: str | None = None, caption: str | None = None,
         id: str | None = None, start: str | None = None, end: str | None = None,
         medium: str = "image", description: str = "") -> registry.DatasetSpec:
  """A spec for Parquet metadata with these columns: url and caption (None: guessed, see the
  module's docstring), id (None: `<file>:<row>`), start and end (clip bounds in seconds;
  None: none), and what the URL is: medium "image", "video" or "audio"."""
  columns = Columns(url, caption, id, start, end, medium)

  def find(path: str, split: str) -> list[tuple[tuple[str, int], int]]:
    listed = files(path)
    # Footers are small and far apart: on an object store each is a few round trips.
    with concurrent.futures.ThreadPoolExecutor(FOOTER_THREADS) as pool:
      footers = list(pool.map(_footer, listed))
    parts = []
    for (file, _, _), (names, counts) in zip(listed, footers):
      columns.resolve(file, names)
      parts += [((file, group), count) for group, count in enumerate(counts) if count]
    return parts

  def read(path: str, part: tuple[str, int], first: int, split: str):
    import pyarrow.parquet as pq  # heavy (0.2 s): only Parquet inputs load it
    file, group = part
    name = _relative(path, file)
    with _open(file) as f:
      parquet = pq.ParquetFile(f)
      roles = columns.resolve(file, parquet.schema_arrow.names)
      row = sum(parquet.metadata.row_group(g).num_rows for g in range(group))  # in the file
      index = first
      wanted = sorted(set(roles.values()))
      for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=wanted):
        values = {c: batch.column(c).to_pylist() for c in wanted}
        for k in range(batch.num_rows):
          yield _entry(columns, roles, {c: values[c][k] for c in wanted}, index, file, row, name)
          index += 1
          row += 1

  return registry.DatasetSpec(
      name=name, parts=registry.Parts(find=find, read=read),
      description=description or (
          f"Parquet metadata (LAION, DataComp): a file or folder of them, {medium} URL and "
          "caption columns (url, caption or text, any case); one row group a worker."))


SPEC = registry.register(spec())
