"""Heads on the pooled encoder output.

ProjectionHead: one MLP per modality family (vision, spectrogram, waveform,
  text) into the shared `embed_dim` space, for contrastive losses. Outputs are
  not normalized: the loss L2-normalizes them.
ClassificationHead: one linear layer per task, zero-initialized so training
  starts from uniform predictions (as big_vision does).
Temperatures: one learnable log-temperature per pair of modality families,
  part of the parameters so all tasks share one optimizer state.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from impax.model.config import Config

FAMILIES = ("vision", "spectrogram", "waveform", "text")
PAIRS = tuple(f"{a}_{b}" for a, b in itertools.combinations(FAMILIES, 2))


def pair_name(family_a: str, family_b: str) -> str:
  """Canonical name of a family pair, e.g. ("text", "vision") -> "vision_text"."""
  a, b = sorted((family_a, family_b), key=FAMILIES.index)
  return f"{a}_{b}"


class ProjectionHead(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    cfg = self.config
    x = nn.Dense(cfg.width, use_bias=cfg.use_bias, name="hidden")(pooled)
    x = nn.gelu(x)
    return nn.Dense(cfg.embed_dim, use_bias=cfg.use_bias, name="out")(x)


class ClassificationHead(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    name="out")(pooled)


class Temperatures(nn.Module):
  config: Config

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    init = nn.initializers.constant(np.log(self.config.temperature_init))
    return {p: jnp.exp(self.param(p, init, ())) for p in PAIRS}
