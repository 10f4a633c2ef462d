"""The build's graph: one pass over the corpus for its vocabularies and layout, however
the runner splits and merges it, and few steps for a small input (each costs a build
time to plan and run, and a Flink build a task)."""

import random

import apache_beam as beam
import pytest

from impax.datasets import registry
from impax.pipelines import build, config as config_lib, graph, read


def entries():
  out = [registry.Entry(i, f"m.jsonl:{i + 1}", f"e{i}", {"image": f"{i}.png"},
                        labels=(f"class {i % 3}",), captions=(f"  a caption {i % 4}",))
         for i in range(3, 40)]
  out.append(registry.BadEntry(2, "m.jsonl:3", "not valid JSON"))
  out.append(registry.Entry(41, "m.jsonl:42", "e41", {"image": "x.png"}, labels=("\ud800",)))
  return out


def one_pass(fn, items):
  acc = fn.create_accumulator()
  for e in items:
    acc = fn.add_input(acc, e)
  return fn.extract_output(acc)


@pytest.mark.parametrize("seed", range(5))
def test_the_corpus_pass_gives_the_same_result_however_it_is_split(seed):
  fn = graph._CorpusFn(config_lib.BuildConfig(num_shards=0, shard_size=10), True, True)
  items = entries()
  whole = one_pass(fn, items)
  assert whole.layout == graph.Layout(num_shards=4, max_index=41, min_index=2)
  assert whole.labels == ["class 0", "class 1", "class 2"]  # distinct, sorted; no bad text
  assert whole.captions == {f"a caption {k}": sum(1 for i in range(3, 40) if i % 4 == k)
                            for k in range(4)}
  rng = random.Random(seed)
  rng.shuffle(items)
  cuts = sorted(rng.sample(range(1, len(items)), 4))
  parts = [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)])]
  accs = [fn.create_accumulator()]  # an empty bundle merges too
  for part in parts:
    acc = fn.create_accumulator()
    for e in part:
      acc = fn.add_input(acc, e)
    accs.append(acc)
  rng.shuffle(accs)
  assert fn.extract_output(fn.merge_accumulators(accs)) == whole


def test_the_corpus_pass_gathers_only_what_the_plan_lacks():
  fn = graph._CorpusFn(config_lib.BuildConfig(num_shards=3), False, False)
  corpus = one_pass(fn, entries())
  assert corpus.labels == [] and corpus.captions == {}
  assert corpus.layout == graph.Layout(num_shards=3, max_index=41, min_index=2)
  empty = fn.extract_output(fn.create_accumulator())
  assert empty.layout.num_shards == 3 and empty.labels == []


def leaf_steps(plan) -> list[str]:
  p = beam.Pipeline(options=build.pipeline_options([], 1, 1))
  graph.build_pipeline(p, plan)
  return sorted(t.unique_name for t in p.to_runner_api().components.transforms.values()
                if not t.subtransforms)


def test_a_small_input_is_read_in_one_step_and_the_graph_stays_small(tmp_path, monkeypatch):
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(f'{{"image": "{i}.png", "caption": "c {i}", "label": "l"}}\n'
                              for i in range(20)))
  plan = build.prepare("jsonl", str(manifest), str(tmp_path / "out"))
  steps = leaf_steps(plan)
  assert not [s for s in steps if s.startswith(("Read/CountLines", "Read/SpreadRanges"))], steps
  # 29 today; it was 74 with a combine per question and the line count for one range.
  assert len(steps) <= 30, steps
  # An input of several ranges numbers its lines from each range's count.
  monkeypatch.setattr(read, "RANGE_BYTES", 300)
  steps = leaf_steps(build.prepare("jsonl", str(manifest), str(tmp_path / "out")))
  assert "Read/CountLines" in steps
