"""A manifest of 100,000 lines is read in byte ranges spread over the workers, with exact line
numbers, and no worker holds the corpus: reading a range keeps one line at a time."""

import json
import tracemalloc

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from impax.datasets import registry
from impax.pipelines import read

LINES = 100_000


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  """100,000 lines whose media do not exist (nothing is decoded), every 10,000th invalid."""
  path = tmp_path_factory.mktemp("big") / "manifest.jsonl"
  with open(path, "w") as f:
    for i in range(LINES):
      if i % 10_000 == 9_999:
        f.write("{not json\n")
      else:
        f.write(json.dumps({"id": f"clip-{i:06d}", "video": f"clips/{i:06d}.mp4",
                            "label": f"class {i % 400}", "caption": f"clip number {i}"}) + "\n")
  return str(path)


def test_ranges_cover_every_line_once_with_its_number(manifest):
  spec = registry.get("jsonl")
  size = read.splittable(manifest, spec)
  ranges = read.byte_ranges(size)
  assert size > 8 * read.RANGE_BYTES and len(ranges) == -(-size // read.RANGE_BYTES)
  counts = [(start, read.count_newlines(manifest, start, end)) for start, end in ranges]
  assert sum(c for _, c in counts) == LINES
  first = read._first_numbers(counts)
  numbers = [n for start, end in ranges for n, _ in read.range_lines(manifest, start, end, first[start])]
  assert numbers == list(range(1, LINES + 1))
  # A range edge inside a line, on a line's first byte, or on its newline.
  with open(manifest, "rb") as f:
    data = f.read()
  edge = data.index(b"\n", 5000)
  for cut in (edge - 3, edge, edge + 1):
    parts = [(0, cut), (cut, len(data))]
    before = data[:cut].count(b"\n")
    lines = [*read.range_lines(manifest, 0, cut, 1), *read.range_lines(manifest, cut, len(data), before + 1)]
    assert [n for n, _ in lines] == list(range(1, LINES + 1)), parts
    assert b"".join(raw for _, raw in lines) == data


def test_reading_a_range_holds_one_line_at_a_time(manifest):
  spec = registry.get("jsonl")
  ranges = read.byte_ranges(read.splittable(manifest, spec))
  counts = [(start, read.count_newlines(manifest, start, end)) for start, end in ranges]
  reader = read._ReadRange(manifest, "jsonl", None, "train")
  first = read._first_numbers(counts)
  tracemalloc.start()
  try:
    seen = 0
    for byte_range in ranges[:2]:  # about 20,000 lines: tracing makes each slow
      for entry in reader.process(byte_range, first):
        seen += isinstance(entry, registry.Entry)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert seen > 15_000
  # Each range is a megabyte; its 10,000 entries would take over 10 MB held at once.
  assert peak < 512 * 1024, peak


def test_the_pipeline_reads_the_ranges_on_its_workers(manifest):
  from apache_beam.testing.util import assert_that, equal_to
  options = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                             "--direct_num_workers=2"])
  with beam.Pipeline(options=options) as p:
    entries = p | read.ReadEntries(manifest, "jsonl", None, "train")
    kinds = entries | beam.Map(lambda e: (type(e).__name__, 1)) | beam.CombinePerKey(sum)
    assert_that(kinds, equal_to([("Entry", LINES - 10), ("BadEntry", 10)]), label="Kinds")
    indices = entries | beam.Map(lambda e: e.index) | beam.CombineGlobally(sum)
    assert_that(indices, equal_to([sum(range(LINES))]), label="EveryLineOnce")
