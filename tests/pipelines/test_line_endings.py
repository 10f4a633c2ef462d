"""Line inputs as other tools save them: a UTF-8 byte-order mark (spreadsheet tools,
PowerShell) and CRLF line ends (Windows) read as the same examples, with the same line
numbers, by the sequential reader and by the parallel byte-range reader."""

import json
import os

import pytest

from impax.datasets import registry
from impax.pipelines import read, text

BOM = b"\xef\xbb\xbf"
VARIANTS = {"bom": (True, False), "crlf": (False, True), "bom-crlf": (True, True)}

# One manifest per line spec: (file name, its lines, the files it needs beside it).
MANIFESTS = {
    "jsonl": ("train.jsonl", [
        '{"id": "a", "image": "images/a.jpg", "caption": "a red square"}',
        '',
        '{"id": "b", "video": "v/b.mp4", "start": 1.5, "end": 3, "labels": ["dog"]}',
        '{"id": "c", "audio": "c.wav", "captions": ["one", "two"]}',
        'not json',
    ], {}),
    "kinetics": ("annotations/train.csv", [
        "label,youtube_id,time_start,time_end,split",
        "abseiling,--07WQ2iBlw,1,11,train",
        '"punching person (boxing)",0Dz3RHxWVas,30,40,train',
        "abseiling,abcdefghijk,x,11,train",
    ], {}),
    "esc50": ("meta/esc50.csv", [
        "filename,fold,target,category,esc10,src_file,take",
        "1-100032-A-0.wav,1,0,dog,True,100032,A",
        "5-200334-A-1.wav,5,1,rooster,True,200334,A",
    ], {}),
    "audioset": ("balanced_train_segments.csv", [
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        "# num_ytids=2, num_segs=2, num_unique_labels=2, num_positive_labels=3",
        "# YTID, start_seconds, end_seconds, positive_labels",
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/0jbk"',
        '--ZhevVpy1s, 50.000, 60.000, "/m/0jbk"',
    ], {"ontology.json": json.dumps([{"id": "/m/09x0r", "name": "Speech"},
                                     {"id": "/m/0jbk", "name": "Animal"}])}),
    "cc3m": ("train.tsv", [
        "a red square on a white wall\timages/00000001.jpg",
        "a blue tile\timages/00000002.png",
        "no tab here images/3.jpg",
    ], {}),
}


def write(root, spec: str, bom: bool, crlf: bool) -> str:
  name, lines, beside = MANIFESTS[spec]
  path = os.path.join(root, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  end = b"\r\n" if crlf else b"\n"
  with open(path, "wb") as f:
    f.write((BOM if bom else b"") + b"".join(line.encode() + end for line in lines))
  for other, content in beside.items():
    with open(os.path.join(root, other), "w") as f:
      f.write(content)
  return path


def comparable(items, root: str) -> list[tuple]:
  """Entries as tuples with the corpus folder taken out of paths, sources and messages."""
  out = []
  for e in sorted(items, key=lambda e: e.index):
    if isinstance(e, registry.Entry):
      media = {k: os.path.relpath(v, root) for k, v in sorted(e.media.items())}
      out.append(("entry", e.index, os.path.relpath(e.source, root), e.id, media, e.start,
                  e.end, e.labels, e.captions))
    else:
      out.append(("bad", e.index, os.path.relpath(e.source, root), e.error.replace(root, "ROOT"),
                  e.id, e.stage))
  return out


def sequential(spec: str, path: str) -> list:
  return list(registry.get(spec).read_entries(path, "train"))


def in_ranges(spec: str, path: str, range_bytes: int) -> list:
  """The byte-range reader's entries, as the ReadRanges step finds them, with ranges this small."""
  fmt = registry.get(spec).lines
  context = fmt.context(path, read.header(path, fmt.header_lines), "train")
  ranges = read.byte_ranges(os.path.getsize(path), range_bytes)
  first = read._first_numbers([(start, read.count_newlines(path, start, end))
                               for start, end in ranges])
  entries = []
  for start, end in ranges:
    for number, raw in read.range_lines(path, start, end, first[start]):
      if number > fmt.header_lines and (e := fmt.parse(context, number, raw)) is not None:
        entries.append(e)
  return entries


@pytest.mark.parametrize("spec", sorted(MANIFESTS))
def test_bom_and_crlf_read_as_the_same_entries(spec, tmp_path):
  plain_root = str(tmp_path / "plain")
  plain = comparable(sequential(spec, write(plain_root, spec, False, False)), plain_root)
  assert any(e[0] == "entry" for e in plain)
  if spec in ("jsonl", "cc3m"):  # line 1 is an example: the one a BOM used to lose
    assert plain[0][:3] == ("entry", 0, MANIFESTS[spec][0] + ":1")
  for variant, (bom, crlf) in VARIANTS.items():
    root = str(tmp_path / variant)
    path = write(root, spec, bom, crlf)
    assert comparable(sequential(spec, path), root) == plain, variant
    # Ranges of 7 bytes start inside lines, on the BOM and between \r and \n.
    for range_bytes in (7, 1 << 20):
      assert comparable(in_ranges(spec, path, range_bytes), root) == plain, (variant, range_bytes)


def test_a_bom_is_not_part_of_the_first_label():
  assert text.parse_labels_file(BOM + b"dog\r\ncat\r\n", "labels.txt") == ["dog", "cat"]


def test_a_manifest_with_bom_and_crlf_builds_the_same_shards(corpus, tmp_path, helpers):
  """The defect as a user met it: line 1 of a BOM manifest failed with "Unexpected UTF-8 BOM"."""
  manifest = corpus["images-train"]
  with open(manifest, "rb") as f:
    lines = f.read().splitlines()
  windows = os.path.join(os.path.dirname(manifest), "images-train-windows.jsonl")
  with open(windows, "wb") as f:
    f.write(BOM + b"".join(line + b"\r\n" for line in lines))
  plain = helpers.build(manifest, tmp_path / "plain", workers=1)
  saved = helpers.build(windows, tmp_path / "windows", workers=1)
  assert saved["num_failed"] == 0 and saved["num_examples"] == plain["num_examples"] == len(lines)
  assert list(helpers.hashes(tmp_path / "windows").values()) == list(
      helpers.hashes(tmp_path / "plain").values())
