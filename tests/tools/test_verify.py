"""`impax verify` names every damaged file and what is wrong with it; the loader refuses a
dataset whose shards disagree with metadata.json and says to run verify."""

import hashlib
import json
import os
import pathlib
import shutil

import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from impax import cli, demo
from impax.datasets import files, metadata, prepared, records
from impax.pipelines import build

OLD_METADATA = (pathlib.Path(__file__).parent.parent / "datasets" / "data"
                / "metadata-before-types.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> pathlib.Path:
  """An image dataset with a train split (2 shards) and a test split (1 shard)."""
  root = tmp_path_factory.mktemp("verify")
  manifests = demo.generate(str(root / "raw"), videos=0, images=10, audio=0, size=32, seed=2)
  for split, shards in (("train", 2), ("test", 1)):
    plan = build.prepare("jsonl", manifests[f"images-{split}"], str(root / "images"), split,
                         ({"image_short_side": 32, "num_shards": shards},))
    build.run(plan, workers=1)
  return root / "images"


@pytest.fixture
def dataset(built, tmp_path) -> pathlib.Path:
  """A copy of the built dataset to damage."""
  return pathlib.Path(shutil.copytree(built, tmp_path / "images"))


def shards(path, split="train") -> list[dict]:
  with open(path / "metadata.json") as f:
    return json.load(f)["splits"][split]["shards"]


def run_verify(capsys, *args) -> tuple[int, str]:
  code = cli.main(["verify", *map(str, args)])
  return code, capsys.readouterr().out


def test_a_good_dataset_verifies_with_a_one_line_summary(built, capsys):
  for args in ((), ("--deep",)):
    code, out = run_verify(capsys, built, *args)
    assert code == 0
    assert out.count("\n") == 1 and out.startswith(f"OK {built}: 2 split(s) (test, train), "
                                                   "3 shard(s), 10 records")
  code, out = run_verify(capsys, built, "--split", "test", "--json")
  report = json.loads(out)
  assert code == 0 and report["ok"] and report["splits"] == ["test"] and report["shards"] == 1


def flip_a_byte(path, at=100):
  with open(path, "r+b") as f:
    f.seek(at)
    byte = f.read(1)[0]
    f.seek(at)
    f.write(bytes([byte ^ 1]))


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage, expected", [
    (os.remove, "{name}: missing"),
    (truncate, "{name}: size {half} bytes, metadata.json says {size}"),
    (flip_a_byte, "{name}: checksum mismatch: sha256 "),
])
def test_each_damage_is_named_with_its_shard_and_reason(dataset, capsys, monkeypatch, damage,
                                                        expected):
  shard = shards(dataset)[1]
  hashed = []
  real_sha256 = files.sha256
  monkeypatch.setattr(files, "sha256", lambda p: hashed.append(p) or real_sha256(p))
  damage(dataset / shard["path"])
  code, out = run_verify(capsys, dataset)
  assert code == 1
  assert out.startswith(f"FAILED {dataset}: 1 problem(s) in 1 file(s) of 3 shard(s)")
  assert expected.format(name=shard["path"], size=shard["num_bytes"],
                         half=shard["num_bytes"] // 2) in out
  # The fast path hashes only a shard whose size is right.
  assert (str(dataset / shard["path"]) in hashed) == (damage is flip_a_byte)


def test_a_damaged_tokenizer_is_named(dataset, capsys):
  flip_a_byte(dataset / "tokenizer.model", at=10)
  code, out = run_verify(capsys, dataset, "--json")
  assert code == 1
  assert [(p["file"], p["kind"]) for p in json.loads(out)["problems"]] == [
      ("tokenizer.model", "checksum")]


def rewrite_shard(dataset, index: int, change):
  """Rewrites a train shard with change(records), and records its new size and sha256 in
  metadata.json, as a build bug would: the fast path then passes it."""
  shard = shards(dataset)[index]
  path = str(dataset / shard["path"])
  reader = ArrayRecordReader(path)
  found = reader.read(list(range(reader.num_records())))
  reader.close()
  with open(dataset / "metadata.json") as f:
    meta = json.load(f)
  writer = ArrayRecordWriter(path, meta["array_record_options"])
  for record in change(found):
    writer.write(record)
  writer.close()
  with open(path, "rb") as f:
    meta["splits"]["train"]["shards"][index].update(
        num_bytes=os.path.getsize(path), sha256=hashlib.sha256(f.read()).hexdigest())
  with open(dataset / "metadata.json", "w") as f:
    json.dump(meta, f)
  return shard["path"]


def test_deep_catches_a_record_that_does_not_parse(dataset, capsys):
  name = rewrite_shard(dataset, 0, lambda records: [records[0], b"\x0fnot a record"] + records[2:])
  assert run_verify(capsys, dataset)[0] == 0  # size and checksum are as recorded
  code, out = run_verify(capsys, dataset, "--deep")
  assert code == 1
  assert f"{name}: record 1 does not parse: not a tf.train.Example" in out


def test_deep_catches_a_record_of_another_spec(dataset, capsys):
  def change(shard_records):
    bad = records.parse_example(shard_records[0])
    bad["image/height"] = [1.5]  # a float where the spec says int64
    return [records.make_example(bad)] + shard_records[1:]
  name = rewrite_shard(dataset, 0, change)
  code, out = run_verify(capsys, dataset, "--deep")
  assert code == 1
  assert (f"{name}: record 0 does not parse: 'image/height' holds float values, the feature "
          "spec says int64") in out


def test_deep_counts_records_per_shard_and_split(dataset, capsys):
  expected = shards(dataset)[1]["num_records"]
  name = rewrite_shard(dataset, 1, lambda records: records[:-1])
  code, out = run_verify(capsys, dataset, "--deep")
  assert code == 1
  assert f"{name}: {expected - 1} records, metadata.json says {expected}" in out
  assert "train    (split): 7 records in its shards, metadata.json's num_examples says 8" in out


def test_the_loader_refuses_a_missing_or_truncated_shard_and_says_to_verify(dataset):
  first, second = (dataset / s["path"] for s in shards(dataset))
  truncate(first)
  with pytest.raises(prepared.DatasetError, match="bytes but") as error:
    prepared.open_dataset(str(dataset))
  assert first.name in str(error.value) and f"impax verify {dataset}" in str(error.value)
  os.remove(second)
  os.remove(first)
  with pytest.raises(prepared.DatasetError, match="missing") as error:
    prepared.open_dataset(str(dataset))
  assert first.name in str(error.value) and f"impax verify {dataset}" in str(error.value)


def test_metadata_without_checksums_loads_and_verifies_by_size(dataset, capsys):
  old = metadata.loads(OLD_METADATA.read_bytes(), where=str(OLD_METADATA))
  assert all(s.sha256 is None for split in old.splits.values() for s in split.shards)
  with open(dataset / "metadata.json") as f:
    meta = json.load(f)
  for split in meta["splits"].values():
    for shard in split["shards"]:
      del shard["sha256"]
  with open(dataset / "metadata.json", "w") as f:
    json.dump(meta, f)
  flip_a_byte(dataset / shards(dataset)[0]["path"])  # a size check cannot see this
  code, out = run_verify(capsys, dataset)
  assert code == 0 and out.startswith("OK ")
  assert "3 shard(s) have no recorded sha256" in out
