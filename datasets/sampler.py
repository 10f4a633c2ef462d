"""Which examples each step reads, at which bucket, with which seed: a pure function of the step.

    sampler = Sampler(seed=0, train=True, weights=(1.0, 2.0), batch_sizes=(32, 16),
                      num_records=1000)
    sampler.bucket_of(7)                 # the bucket step 7 draws
    sampler.examples(7)                  # [(stream position, record), ...] of this process
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

Evaluation reads every record once, in order, at the first bucket.

Nothing here reads data: the records it names are positions in a split (the
`records` a task can read, or all of them), which a record source reads.
"""

import dataclasses
import enum
import functools

import grain
import numpy as np

BLOCK = 1024  # steps drawn together by `draw`


class Stream(enum.IntEnum):
  """The named random streams of a run: generators are seeded by (seed, stream, ...).

  The values are part of every run's draws: changing one changes its batches."""
  BUCKET = 1  # the loader's bucket of each step
  EXAMPLE = 2  # an example's preprocessing (crop, flip, clip start): (seed, 2, step, position)
  SCHEDULE = 3  # the trainer's "random" schedule: the task of each step (train/schedule.py)


@functools.lru_cache(maxsize=64)
def _block(weights: tuple[float, ...], seed: int, stream: int, block: int) -> np.ndarray:
  p = np.asarray(weights, np.float64)
  return np.random.default_rng([seed, stream, block]).choice(len(p), size=BLOCK, p=p / p.sum())


def draw(weights: tuple[float, ...], seed: int, stream: Stream, step: int) -> int:
  """An index drawn by weight for `step`, from a generator seeded by (seed, stream, step's
  block): known for any step without drawing the ones before."""
  return int(_block(tuple(weights), seed, int(stream), step // BLOCK)[step % BLOCK])


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Steps -> buckets, stream positions and records; pickled to Grain's worker processes."""
  seed: int
  train: bool
  weights: tuple[float, ...]  # of the buckets; evaluation reads the first only
  batch_sizes: tuple[int, ...]  # global, per bucket
  num_records: int  # the task's records: `records` if given, else the split's
  records: np.ndarray | None = dataclasses.field(default=None, compare=False)  # split positions
  process_index: int = 0
  process_count: int = 1

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
  def shuffled(self) -> grain.MapDataset:
    """The training stream: record `shuffled[p]` (of the task's) at stream position p."""
    return grain.MapDataset.range(self.num_records).shuffle(seed=self.seed).repeat()

  def examples(self, step: int) -> list[tuple[int, int]]:
    """(stream position, split position of its record) of each example this process reads at
    step `step`, in batch order; an evaluation's last batch may hold fewer."""
    n = self.batch_size(self.bucket_of(step))
    first = self.stream_start(step) + self.process_index * n
    positions = range(first, first + n if self.train else min(first + n, self.num_records))
    records = [int(self.shuffled[p]) for p in positions] if self.train else list(positions)
    if self.records is not None:
      records = [int(self.records[r]) for r in records]
    return list(zip(positions, records))

  def example_rng(self, step: int, position: int) -> np.random.Generator:
    """The generator of one example's preprocessing."""
    return np.random.default_rng([self.seed, int(Stream.EXAMPLE), step, position])
