"""Step 1 of the build: the corpus's input becomes Entries, spread over the workers.

A line-oriented input (a spec with `lines`: a manifest, CSV or TSV) is cut into
byte ranges of RANGE_BYTES. Each range's newlines are counted first, on the
workers, which numbers every range's first line; then each range is parsed on
its own. No worker holds more than the line it is parsing, and the launcher
holds only the list of ranges: a manifest of millions of lines is read like a
small one, and its line numbers in failure messages are exact. An input of one
range has nothing to count: its first line is line 1.

An input in parts (a spec with `parts`: Parquet files, one part per row group)
is listed by the launcher with each part's record count (from the files' footers,
a few KB each), which numbers every part's first entry; then each part is read on
its own.

Any other input (a JSON file, a folder) is read by one worker as a stream;
so is a compressed line file, which cannot be entered in the middle.
"""

import itertools

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from impax.datasets import registry
from impax.pipelines import storage

RANGE_BYTES = 1 << 20  # about 10,000 manifest lines a range
_RAW = CompressionTypes.UNCOMPRESSED


def byte_ranges(size: int, range_bytes: int = RANGE_BYTES) -> list[tuple[int, int]]:
  return [(start, min(start + range_bytes, size)) for start in range(0, size, range_bytes)]


def count_newlines(path: str, start: int, end: int) -> int:
  storage.patch_beam()  # runs on a worker (the CountLines step)
  count = 0
  with storage.open_raw(path) as f:
    f.seek(start)
    left = end - start
    while left > 0 and (chunk := f.read(min(left, 1 << 20))):
      count += chunk.count(b"\n")
      left -= len(chunk)
  return count


def range_lines(path: str, start: int, end: int, first_number: int):
  """(number, bytes) of every line that starts in [start, end); `first_number` is
  1 + the number of newlines before `start`."""
  with storage.open_raw(path) as f:
    number, position = first_number, start
    if start > 0:
      f.seek(start - 1)
      if f.read(1) != b"\n":  # the range starts inside a line: its owner is the range before
        position += len(f.readline())
        number += 1
    while position < end and (line := f.readline()):
      yield number, registry.without_bom(number, line)
      number += 1
      position += len(line)


def header(path: str, count: int) -> list[bytes]:
  lines = []
  if count:
    for number, raw in registry.read_lines(path):
      lines.append(raw)
      if number == count:
        break
  return lines


def checked(entry):
  """An entry whose id or paths are not valid Unicode becomes a failure here, since
  Beam's coders (and the record) need UTF-8."""
  if isinstance(entry, registry.Entry):
    try:
      for value in (entry.id, *entry.media.values()):
        value.encode("utf-8")
    except UnicodeEncodeError:
      return registry.BadEntry(entry.index, entry.source, "id or media path is not valid "
                               "Unicode (a lone surrogate escape?)")
  return entry


def _read_all(input_path: str, spec_name: str, spec_source: str | None, split: str):
  storage.patch_beam()  # runs on a worker (the ReadAll step)
  for entry in registry.resolve(spec_name, spec_source).read_entries(input_path, split):
    yield checked(entry)


def _first_numbers(counts: list[tuple[int, int]]) -> dict[int, int]:
  """{range start: number of its first line} from each range's newline count."""
  numbers, seen = {}, 0
  for start, count in sorted(counts):
    numbers[start] = seen + 1
    seen += count
  return numbers


class _ReadRange(beam.DoFn):
  def __init__(self, input_path: str, spec_name: str, spec_source: str | None, split: str):
    self.input, self.spec_name, self.spec_source, self.split = (
        input_path, spec_name, spec_source, split)
    self._context = None

  def setup(self):
    storage.patch_beam()

  def process(self, byte_range, first_numbers: dict[int, int]):
    fmt = registry.resolve(self.spec_name, self.spec_source).lines
    if self._context is None:  # once per worker: the header and what it says
      self._context = (fmt.context(self.input, header(self.input, fmt.header_lines), self.split),)
    start, end = byte_range
    for number, raw in range_lines(self.input, start, end, first_numbers[start]):
      if number > fmt.header_lines:
        if (entry := fmt.entry(self._context[0], self.input, number, raw)) is not None:
          yield checked(entry)


def _read_part(part_first, input_path: str, spec_name: str, spec_source: str | None, split: str):
  storage.patch_beam()  # runs on a worker (the ReadParts step)
  part, first = part_first
  for entry in registry.resolve(spec_name, spec_source).parts.read(input_path, part, first, split):
    yield checked(entry)


def numbered_parts(parts: list[tuple[object, int]]) -> list[tuple[object, int]]:
  """(part, its first index) from (part, its record count), in the input's order."""
  firsts = itertools.accumulate((count for _, count in parts), initial=0)
  return [(part, first) for (part, _), first in zip(parts, firsts)]


def splittable(input_path: str, spec: registry.DatasetSpec) -> int | None:
  """The input's size when it can be read in byte ranges, else None."""
  if spec.lines is None or CompressionTypes.detect_compression_type(input_path) != _RAW:
    return None
  try:
    metadata = FileSystems.match([input_path])[0].metadata_list
  except Exception:  # a folder, or a pattern Beam cannot match
    return None
  return metadata[0].size_in_bytes if len(metadata) == 1 else None


def _size(input_path: str) -> int:
  """The bytes of a file input, or of every file under a folder input."""
  pattern = storage.join(input_path, "**") if storage.is_dir(input_path) else input_path
  return sum(m.size_in_bytes for m in FileSystems.match([pattern])[0].metadata_list)


def max_entries(input_path: str, spec: registry.DatasetSpec, within: int | None = 1 << 16) -> int | None:
  """At most how many entries a line-oriented input of up to `within` bytes (None: any
  size) holds: its lines as range_lines counts them, less the header; of an input in
  parts, the parts' record counts. A small build
  starts no more workers than that, and the progress line counts towards it. None when
  unknown."""
  if spec.parts is not None:
    if within is not None and _size(input_path) > within:
      return None
    return sum(count for _, count in spec.parts.find(input_path, "train"))
  size = splittable(input_path, spec)
  if size is None or (within is not None and size > within):
    return None
  lines, last = 0, b"\n"
  with storage.open_raw(input_path) as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      lines += block.count(b"\n")
      last = block[-1:]
  lines += last != b"\n"  # a last line without its newline
  return max(0, lines - spec.lines.header_lines)


class ReadEntries(beam.PTransform):
  """The input's Entries and BadEntries, in no particular order (their index orders them)."""

  def __init__(self, input_path: str, spec_name: str, spec_source: str | None, split: str,
               range_bytes: int | None = None):
    super().__init__()
    self.input, self.spec_name, self.spec_source, self.split = (
        input_path, spec_name, spec_source, split)
    self.range_bytes = range_bytes or RANGE_BYTES

  def expand(self, pbegin):
    spec = registry.resolve(self.spec_name, self.spec_source)
    if spec.parts is not None:
      numbered = numbered_parts(spec.parts.find(self.input, self.split))
      parts = pbegin | "Parts" >> beam.Create(numbered)
      if len(numbered) > 1:
        parts |= "SpreadParts" >> beam.Reshuffle()
      return parts | "ReadParts" >> beam.FlatMap(_read_part, self.input, self.spec_name,
                                                 self.spec_source, self.split)
    size = splittable(self.input, spec)
    if size is None:
      return (pbegin
              | "Input" >> beam.Create([self.input])
              | "ReadAll" >> beam.FlatMap(_read_all, self.spec_name, self.spec_source, self.split))
    reader = _ReadRange(self.input, self.spec_name, self.spec_source, self.split)
    spans = byte_ranges(size, self.range_bytes)
    if len(spans) <= 1:  # one range: its first line is line 1, nothing to count or spread
      return (pbegin
              | "Ranges" >> beam.Create(spans)
              | "ReadRanges" >> beam.ParDo(reader, {0: 1}))
    path = self.input
    ranges = (pbegin
              | "Ranges" >> beam.Create(spans)
              | "SpreadRanges" >> beam.Reshuffle())
    first_numbers = (ranges
                     | "CountLines" >> beam.Map(lambda r: (r[0], count_newlines(path, *r)))
                     | "AllCounts" >> beam.combiners.ToList()
                     | "FirstLines" >> beam.Map(_first_numbers))
    return ranges | "ReadRanges" >> beam.ParDo(reader, beam.pvalue.AsSingleton(first_numbers))
