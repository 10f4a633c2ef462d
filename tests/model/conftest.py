"""Shared fixtures: the tiny preset, its parameters and a batch of every modality."""

import jax
import numpy as np
import pytest

from impax.model import get_config, init_params


@pytest.fixture(scope="session")
def tiny():
  return get_config("tiny")


@pytest.fixture(scope="session")
def tiny_params(tiny):
  return init_params(tiny, jax.random.key(0))


def random_inputs(batch: int = 4, seed: int = 0, **shapes) -> dict:
  """Inputs of every modality; shapes override the defaults per modality."""
  rng = np.random.default_rng(seed)
  shapes = {"image": (32, 32, 3), "video": (4, 32, 32, 3),
            "spectrogram": (64, 32), "waveform": (4096,), "text": (12,),
            **shapes}
  out = {}
  for name, shape in shapes.items():
    if shape is None:
      continue
    if name == "text":
      out[name] = rng.integers(1, 32_100, (batch, *shape)).astype(np.int32)
    else:
      out[name] = rng.random((batch, *shape), dtype=np.float32)
  return out


@pytest.fixture
def make_inputs():
  return random_inputs
