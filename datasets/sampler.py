"""Which examples each step reads, at which bucket, with which seed: a pure function of the step.

    sampler = Sampler(seed=0, train=True, weights=(1.0, 2.0), batch_sizes=(32, 16),
                      parts=(Part(1000),))   # a mixture: one Part per dataset, with weights
    sampler.bucket_of(7)                 # the bucket step 7 draws
    sampler.examples(7)                  # [Example(position, dataset, record), ...] of this process
    rng = sampler.example_rng(7, position)  # crops, flips, clip starts of one example

Every random choice a run makes is drawn from a generator seeded by
(seed, stream, ...), one named stream per purpose (`Stream`), so that any
step's draws are known without making the steps before it: a resumed run and
a planner (`impax plan`) see what the trainer will take.

Training. Step i draws its bucket by the buckets' weights from stream BUCKET
(`draw`). Examples come from one endless stream: the task's records in a Grain
global shuffle that differs per epoch (`MapDataset.range(N).shuffle(seed).repeat()`);
step i takes the stream positions after those of steps 0..i-1, and process p
of P takes its 1/P of them. Each example's preprocessing draws from stream
EXAMPLE seeded by (seed, step, position), so a batch depends on nothing but its
step: not on the worker count, not on what ran before.

A mixture (a task reading several datasets by weight) draws each stream
position's dataset by the datasets' weights from stream MIXTURE; the k-th
position that draws dataset d reads the k-th record of d's own stream, a Grain
global shuffle of d's records seeded by (seed, d). A task of one dataset draws
nothing: its stream is the records' shuffle seeded by the seed alone.

Evaluation reads every record once, in order (a mixture: each dataset's in
turn), at the first bucket.

Nothing here reads data: the records it names are positions in a split (the
`records` a task can read, or all of them), which a record source reads.
"""

import dataclasses
import enum
import functools
from typing import NamedTuple

import grain
import numpy as np

BLOCK = 1024  # steps drawn together by `draw`


class Stream(enum.IntEnum):
  """The named random streams of a run: generators are seeded by (seed, stream, ...).

  The values are part of every run's draws: changing one changes its batches."""
  BUCKET = 1  # the loader's bucket of each step
  EXAMPLE = 2  # an example's preprocessing (crop, flip, clip start): (seed, 2, step, position)
  SCHEDULE = 3  # the trainer's "random" schedule: the task of each step (train/schedule.py)
  MIXTURE = 4  # a mixture's dataset at each stream position; (seed, 4, d): dataset d's shuffle


@functools.lru_cache(maxsize=64)
def _block(weights: tuple[float, ...], seed: int, stream: int, block: int) -> np.ndarray:
  p = np.asarray(weights, np.float64)
  return np.random.default_rng([seed, stream, block]).choice(len(p), size=BLOCK, p=p / p.sum())


MIX_BLOCK = 1 << 16  # stream positions whose datasets are drawn together (`Sampler._mix_block`)


@functools.lru_cache(maxsize=8)
def _mix_draws(weights: tuple[float, ...], seed: int, block: int) -> np.ndarray:
  """The datasets of stream positions [block * MIX_BLOCK, (block + 1) * MIX_BLOCK)."""
  return np.random.default_rng([seed, int(Stream.MIXTURE), block]).choice(
      len(weights), size=MIX_BLOCK, p=weights)


def draw(weights: tuple[float, ...], seed: int, stream: Stream, step: int) -> int:
  """An index drawn by weight for `step`, from a generator seeded by (seed, stream, step's
  block): known for any step without drawing the ones before."""
  return int(_block(tuple(weights), seed, int(stream), step // BLOCK)[step % BLOCK])


@dataclasses.dataclass(frozen=True)
class Part:
  """One dataset of a task's stream: the records it can read, and its weight in a mixture."""
  num_records: int  # `records` if given, else the split's
  records: np.ndarray | None = dataclasses.field(default=None, compare=False)  # split positions
  weight: float = 1.0


class Example(NamedTuple):
  """One example of a step: its stream position, its dataset (index into the task's
  datasets) and the split position of its record there."""
  position: int
  dataset: int
  record: int


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Steps -> buckets, stream positions and records; pickled to Grain's worker processes."""
  seed: int
  train: bool
  weights: tuple[float, ...]  # of the buckets; evaluation reads the first only
  batch_sizes: tuple[int, ...]  # global, per bucket
  parts: tuple[Part, ...]  # the task's datasets, in the order it lists them
  process_index: int = 0
  process_count: int = 1

  @property
  def num_records(self) -> int:
    """The records the task reads, in all its datasets."""
    return sum(p.num_records for p in self.parts)

  @property
  def records(self) -> np.ndarray | None:
    """The split positions a task of one dataset reads (None: all)."""
    return self.parts[0].records

  @functools.cached_property
  def _block_starts(self) -> list[int]:
    return [0]  # stream position of each block's first step; grows on demand

  def bucket_of(self, step: int) -> int:
    if not self.train:
      return 0
    return draw(self.weights, self.seed, Stream.BUCKET, step)

  def batch_size(self, bucket: int) -> int:
    """This process's share of a global batch of the bucket."""
    return self.batch_sizes[bucket] // self.process_count

  def stream_start(self, step: int) -> int:
    """First stream position of step `step` (global, before the process split)."""
    if not self.train:
      return step * self.batch_sizes[0]
    block, within = divmod(step, BLOCK)
    starts, sizes = self._block_starts, np.array(self.batch_sizes)
    while len(starts) <= block:
      starts.append(starts[-1] + int(sizes[self._block_buckets(len(starts) - 1)].sum()))
    return starts[block] + int(sizes[self._block_buckets(block)[:within]].sum())

  def _block_buckets(self, block: int) -> np.ndarray:
    return _block(self.weights, self.seed, int(Stream.BUCKET), block)

  @functools.cached_property
  def streams(self) -> tuple[grain.MapDataset, ...]:
    """Each dataset's endless stream: its k-th record read (of those it can read) is
    `streams[d][k]`, a global shuffle that differs per epoch."""
    if len(self.parts) == 1:
      return (grain.MapDataset.range(self.num_records).shuffle(seed=self.seed).repeat(),)
    return tuple(
        grain.MapDataset.range(p.num_records).shuffle(seed=int(np.random.SeedSequence(
            [self.seed, int(Stream.MIXTURE), d]).generate_state(1)[0])).repeat()
        for d, p in enumerate(self.parts))

  @property
  def shuffled(self) -> grain.MapDataset:
    """The training stream of a task of one dataset: its record `shuffled[p]` at position p."""
    return self.streams[0]

  @functools.cached_property
  def _mix_counts(self) -> list[np.ndarray]:
    return [np.zeros(len(self.parts), np.int64)]  # draws per dataset before each block

  def _mix_block(self, block: int) -> np.ndarray:
    p = np.array([part.weight for part in self.parts], np.float64)
    return _mix_draws(tuple(p / p.sum()), self.seed, block)

  def _before(self, block: int) -> np.ndarray:
    """Draws of each dataset in the blocks before `block`."""
    counts = self._mix_counts
    while len(counts) <= block:
      counts.append(counts[-1] + np.bincount(self._mix_block(len(counts) - 1),
                                             minlength=len(self.parts)))
    return counts[block]

  def _mixed(self, positions: range) -> list[tuple[int, int]]:
    """(dataset, its stream's index) of consecutive training stream positions."""
    out = []
    for block in range(positions.start // MIX_BLOCK, (positions.stop - 1) // MIX_BLOCK + 1):
      drawn, base = self._mix_block(block), block * MIX_BLOCK
      lo, hi = max(positions.start, base) - base, min(positions.stop, base + MIX_BLOCK) - base
      seen = self._before(block) + np.bincount(drawn[:lo], minlength=len(self.parts))
      for d in drawn[lo:hi]:
        out.append((int(d), int(seen[d])))
        seen[d] += 1
    return out

  def drawn(self, positions: int) -> list[int]:
    """How many of the training stream's first `positions` examples each dataset gives:
    exact, as the examples are drawn."""
    if len(self.parts) == 1:
      return [positions]
    block, within = divmod(positions, MIX_BLOCK)
    counts = self._before(block) + np.bincount(self._mix_block(block)[:within],
                                               minlength=len(self.parts))
    return counts.tolist()

  def examples(self, step: int) -> list[Example]:
    """The examples this process reads at step `step`, in batch order; an evaluation's last
    batch may hold fewer."""
    n = self.batch_size(self.bucket_of(step))
    first = self.stream_start(step) + self.process_index * n
    positions = range(first, first + n if self.train else min(first + n, self.num_records))
    if not self.train:  # every record once, each dataset's in turn
      starts = np.cumsum([0] + [p.num_records for p in self.parts])
      drawn = [(d := int(np.searchsorted(starts, q, "right")) - 1, q - int(starts[d]))
               for q in positions]
    elif len(self.parts) == 1:
      drawn = [(0, int(self.streams[0][q])) for q in positions]
    else:
      drawn = [(d, int(self.streams[d][k])) for d, k in self._mixed(positions)]
    out = []
    for q, (d, r) in zip(positions, drawn):
      records = self.parts[d].records
      out.append(Example(q, d, r if records is None else int(records[r])))
    return out

  def example_rng(self, step: int, position: int) -> np.random.Generator:
    """The generator of one example's preprocessing."""
    return np.random.default_rng([self.seed, int(Stream.EXAMPLE), step, position])
