"""Helpers of the loader tests (tests/ is on sys.path: pyproject.toml's pytest pythonpath)."""

import numpy as np


def take(it, n):
  """The next n batches of an iterator."""
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  """Two lists of batches hold the same keys and the same arrays, bit for bit."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
