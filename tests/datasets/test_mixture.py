"""A task that mixes datasets by weight: each example drawn from a dataset chosen by weight,
each dataset in its own global shuffle, deterministic and resumable like one dataset; the
ids (and a mixture's dataset) of every example in its batch; mixtures the reader cannot
serve refused by name; `impax plan` listing each dataset's share and epochs."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

from batches import assert_batches_equal, take
from impax.datasets import exclusions, loader, prepared
from impax.datasets import sampler as sampler_lib
from impax.datasets.loader import Bucket
from impax.train import config as config_lib
from impax.train import plan as plan_lib
from impax.train.config import Task, TrainConfig

PATCHES = loader.Patches(tubelet=(2, 8, 8))


@pytest.fixture(scope="module")
def two(demo_data, tmp_path_factory):
  """The demo's videos and a second dataset: a copy of them, whose records a batch tells
  apart by its "dataset" index."""
  copy = tmp_path_factory.mktemp("mixture") / "copy"
  shutil.copytree(demo_data["videos"], copy)
  return demo_data["videos"], str(copy)


def task(dataset, **kw):
  return Task(**{**dict(name="video_text", dataset=dataset, objective="contrastive",
                        modalities=("video", "text"),
                        buckets=(Bucket(video=(2, 16, 16), batch_size=8),), text_length=8),
                 **kw})


def mixture(two, weights=(3.0, 1.0), **kw):
  return task(dict(zip(two, weights)), **kw)




def ids_of(root, split="train"):
  return exclusions.split_ids(prepared.open_dataset(root), split)


def test_each_example_comes_from_a_dataset_drawn_by_weight_each_in_its_own_shuffle(two):
  data = loader.Loader(mixture(two), seed=5, patches=PATCHES)
  assert data.roots == two and data.part_records == (data.num_records // 2,) * 2
  examples = [e for step in range(400) for e in data.sampler.examples(step)]
  share = np.mean([e.dataset == 0 for e in examples])
  n = len(examples)  # 3,200 draws: within 4 standard errors of the weight's 3/4
  assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)
  assert data.sampler.drawn(n) == [sum(e.dataset == d for e in examples) for d in (0, 1)]
  for d, size in enumerate(data.part_records):  # its own epochs: every record once each
    drawn = [e.record for e in examples if e.dataset == d]
    first, second = drawn[:size], drawn[size:2 * size]
    assert sorted(first) == sorted(second) == list(range(size)) and first != second
  # The batches hold what the draws name: each example's dataset and its record's id.
  ids = [ids_of(root) for root in two]
  for step, batch in enumerate(take(iter(data), 4)):
    drawn = data.sampler.examples(step)
    assert batch["valid"].all()
    assert batch["dataset"].tolist() == [e.dataset for e in drawn]
    assert batch["id"].tolist() == [ids[e.dataset][e.record] for e in drawn]
  # Datasets are drawn in blocks of stream positions: a position past the first block is
  # drawn alike whether or not the positions before it were.
  one = dataclasses.replace(data.sampler, batch_sizes=(1,))
  later = dataclasses.replace(one).examples(sampler_lib.MIX_BLOCK)[0]
  assert [one.examples(s)[0] for s in (sampler_lib.MIX_BLOCK - 1, sampler_lib.MIX_BLOCK)][1] == later
  before = one.drawn(sampler_lib.MIX_BLOCK)
  assert np.subtract(one.drawn(sampler_lib.MIX_BLOCK + 1), before).tolist() == [
      int(later.dataset == d) for d in (0, 1)]
  # One dataset's examples in a mixture are that dataset's own examples.
  alone = loader.Loader(task(two[1]), seed=5, patches=PATCHES)
  assert alone.sampler.examples(0)[0].dataset == 0 and "dataset" not in next(iter(alone))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mixture_is_deterministic_and_resumes_exactly(two, workers):
  expected = take(iter(loader.Loader(mixture(two), seed=5, patches=PATCHES)), 12)
  it = iter(loader.Loader(mixture(two), seed=5, patches=PATCHES, num_workers=workers))
  first = take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  assert_batches_equal(first + take(it, 7), expected)
  resumed = iter(loader.Loader(mixture(two), seed=5, patches=PATCHES, num_workers=workers))
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 7), expected[5:])
  other = next(iter(loader.Loader(mixture(two), seed=6, patches=PATCHES)))
  assert other["id"].tolist() != expected[0]["id"].tolist()


def test_exclusions_apply_to_each_dataset(two, tmp_path):
  excluded = ids_of(two[0])[:3]
  listed = tmp_path / "exclude.txt"
  listed.write_text("".join(f"{i}\n" for i in excluded))
  data = loader.Loader(mixture(two, exclude=str(listed)), seed=5, patches=PATCHES)
  assert data.excluded == 6 and data.part_records == ((data.num_records + 6) // 2 - 3,) * 2
  seen = {i for batch in take(iter(data), 40) for i in batch["id"].tolist()}
  assert not seen & set(excluded) and len(seen) > 10


def test_evaluation_reads_each_dataset_once_in_turn(two):
  data = loader.Loader(mixture(two), train=False, seed=5, patches=PATCHES)
  batches = list(iter(data))[:data.num_batches]
  ids = [i for b in batches for i in b["id"][b["valid"]].tolist()]
  where = [d for b in batches for d in b["dataset"][b["valid"]].tolist()]
  test = ids_of(two[0], "test")
  assert ids == test + test and where == [0] * len(test) + [1] * len(test)
  assert (batches[-1]["dataset"][~batches[-1]["valid"]] == -1).all()  # padding: no dataset


def rewrite(root, copy, change):
  shutil.copytree(root, copy)
  path = copy / "metadata.json"
  meta = json.loads(path.read_text())
  change(meta)
  path.write_text(json.dumps(meta))
  return str(copy)


def test_a_mixture_the_reader_cannot_serve_is_refused_by_name(two, tmp_path):
  other = rewrite(two[0], tmp_path / "other-tokenizer",
                  lambda m: m["tokenizer"].update(sha256="0" * 64))
  with pytest.raises(loader.LoaderError, match=f"mixes {two[0]} and {other}, tokenized by "
                                               "different tokenizers"):
    loader.Loader(mixture((two[0], other)), patches=PATCHES)
  relabelled = rewrite(two[0], tmp_path / "other-labels",
                       lambda m: m.update(labels=[f"x{name}" for name in m["labels"]]))
  with pytest.raises(loader.LoaderError, match="whose label names differ"):
    loader.Loader(mixture((two[0], relabelled)), labels=True, patches=PATCHES)
  loader.Loader(mixture((two[0], relabelled)), patches=PATCHES)  # text only: labels unread
  with pytest.raises(config_lib.ConfigError, match="positive weights"):
    config_lib.check(TrainConfig(tasks=(mixture(two, weights=(1.0, 0.0)),)))


def test_the_plan_lists_each_dataset_with_its_share_and_epochs(two):
  config = TrainConfig(tasks=(mixture(two),), model="tiny", steps=50)
  plan = plan_lib.for_config(config)
  (video,) = plan.tasks
  first, second = video.datasets
  assert (first.root, second.root) == two and (first.weight, second.weight) == (3.0, 1.0)
  assert first.examples_seen + second.examples_seen == video.examples_seen == 50 * 8
  assert 0.6 < first.examples_seen / video.examples_seen < 0.9
  assert first.epochs == first.examples_seen / first.examples
  lines = "\n".join(plan.lines())
  assert f"  {two[0]}" in lines and "weight 3" in lines and "of ex." in lines
  shares = plan.to_json()["tasks"]["video_text"]["datasets"]
  assert shares[two[1]]["examples_seen"] == second.examples_seen
  # A dataset read less than once is warned about by name, as a task is.
  short = plan_lib.for_config(dataclasses.replace(
      config, steps=2, tasks=(mixture(two, weights=(1.0, 1.0)),)))
  assert any(f"dataset {two[1]} gives" in w for w in short.warnings())


def test_set_takes_a_mixture_as_json(two):
  config = TrainConfig(tasks=(task(two[0]),), model="tiny")
  mixed = config_lib.apply_overrides(
      config, [f'tasks.video_text.dataset={{"{two[0]}": 2, "{two[1]}": 1}}'])
  assert mixed.tasks[0].dataset == {two[0]: 2.0, two[1]: 1.0}
  again = config_lib.apply_overrides(mixed, [f"tasks.video_text.dataset={two[1]}"])
  assert again.tasks[0].dataset == two[1]
