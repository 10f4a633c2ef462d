"""Which task each optimizer step takes, as a pure function of the step.

"intervals" is IMP's: the loop walks the tasks in a fixed order, cycle after
cycle, and a task with interval k takes a step in every k-th cycle (cycle
counter a multiple of k). "random" draws the task of step s by weight from a
generator seeded by (seed, s) on the run's SCHEDULE stream (datasets/sampler.py,
beside the loader's streams). Either way the task of any step is known without
running the steps before it, so a resumed run follows the same schedule.
"""

import functools
import math

from impax.datasets.sampler import Stream, draw


@functools.lru_cache(maxsize=16)
def _period(intervals: tuple[int, ...]) -> tuple[int, ...]:
  cycles = math.lcm(*intervals)
  return tuple(i for c in range(cycles) for i, k in enumerate(intervals) if c % k == 0)


def task_of(step: int, kind: str, intervals: tuple[int, ...], weights: tuple[float, ...],
            seed: int) -> int:
  if kind == "intervals":
    period = _period(intervals)
    return period[step % len(period)]
  if kind == "random":
    return draw(weights, seed, Stream.SCHEDULE, step)
  raise ValueError(f"unknown schedule {kind!r}")


def shares(kind: str, intervals: tuple[int, ...], weights: tuple[float, ...]) -> list[float]:
  """The fraction of steps each task takes in the long run."""
  if kind == "intervals":
    period = _period(intervals)
    return [period.count(i) / len(period) for i in range(len(intervals))]
  total = sum(weights)
  return [w / total for w in weights]
