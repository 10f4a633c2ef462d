"""Modality embedders: raw inputs -> tokens, with positional embeddings.

The input contract (what the trainer feeds: impax.train.inputs.model_inputs
makes it from the loader's batches):

  image        float32 [batch, height, width, 3], in [-1, 1].
  video        float32 [batch, frames, height, width, 3], in [-1, 1].
  spectrogram  float32 [batch, time_frames, mel_bins]: log-mel, standardized per
               example (zero mean, unit variance over time and frequency).
  waveform     float32 [batch, samples], in [-1, 1].
  text         int32 [batch, length] token ids, pad id 0, with an optional
               "text_mask" [batch, length] (1 = real token); without a mask,
               tokens equal to 0 are padding.

Patching is a strided "valid" convolution written as reshape + matmul:
video is cut into tubelets of `config.tubelet` (time x height x width),
spectrograms into `spectrogram_patch` (time x mel), waveforms into
`waveform_patch` samples. Trailing samples that do not fill a whole patch are
dropped (as a VALID convolution does).

An image is a clip of `tubelet[0]` identical frames, as in IMP (an image is
4 frames there). That clip is never materialized: repeating a frame t times and
applying the tubelet kernel equals applying the kernel summed over its time
axis to the frame, which is what `VisionEmbed` does. Images and videos share
one kernel and one positional table.

Positional embeddings are learned and factorized (time + height + width for
vision, time + frequency for spectrograms, time for waveforms and text), and
looked up from normalized token coordinates: a token at grid index i of g along
an axis with B buckets uses bucket floor((i + 0.5) / g * B). So 8 frames at
64x64 and 16 frames at 128x128 run with the same weights, and dropping tokens
keeps each token's own position. Text positions are absolute up to
`text_pos_buckets` (the table then indexes positions 0..B-1 exactly) and
squeezed beyond it.

DropToken (`drop_tokens`) removes a random fraction of tokens per example after
positional embeddings are added; padding is dropped before real tokens.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from impax.model.config import Config

MODALITIES = ("image", "video", "spectrogram", "waveform", "text")
# Which embedder (and projection head) a modality uses.
FAMILY = {"image": "vision", "video": "vision", "spectrogram": "spectrogram",
          "waveform": "waveform", "text": "text"}

_patch_init = nn.initializers.lecun_normal()
_pos_init = nn.initializers.normal(stddev=0.02)


def patchify(x: jax.Array, patch: tuple[int, ...]):
  """[b, *spatial, c] -> ([b, prod(grid), prod(patch) * c], grid)."""
  b, *spatial, c = x.shape
  grid = tuple(s // p for s, p in zip(spatial, patch))
  if min(grid) < 1:
    raise ValueError(f"Input of shape {x.shape[1:-1]} is smaller than one "
                     f"patch {patch}.")
  x = x[(slice(None),) + tuple(slice(0, g * p) for g, p in zip(grid, patch))]
  x = x.reshape([b] + [v for g, p in zip(grid, patch) for v in (g, p)] + [c])
  n = len(grid)
  x = x.transpose([0] + [1 + 2 * i for i in range(n)] +
                  [2 + 2 * i for i in range(n)] + [1 + 2 * n])
  return x.reshape(b, math.prod(grid), math.prod(patch) * c), grid


def grid_coordinates(grid: tuple[int, ...]) -> np.ndarray:
  """Normalized cell-center coordinates in [0, 1), [prod(grid), len(grid)]."""
  axes = [(np.arange(g, dtype=np.float32) + 0.5) / g for g in grid]
  mesh = np.meshgrid(*axes, indexing="ij")
  return np.stack([m.reshape(-1) for m in mesh], axis=-1)


class FactorizedPosEmbed(nn.Module):
  """Sum of one learned table per axis, indexed by normalized coordinates."""
  buckets: tuple[int, ...]
  names: tuple[str, ...]
  width: int

  @nn.compact
  def __call__(self, coords: jax.Array) -> jax.Array:
    """coords: [..., len(buckets)] in [0, 1) -> [..., width] float32."""
    out = 0.0
    for axis, (num, name) in enumerate(zip(self.buckets, self.names)):
      table = self.param(f"pos_{name}", _pos_init, (num, self.width))
      ids = jnp.clip(jnp.floor(coords[..., axis] * num).astype(jnp.int32),
                     0, num - 1)
      out = out + table[ids]
    return out


def _embed_patches(module, patches, kernel_shape, config, dtype, kernel=None):
  """patches [b, n, k] @ kernel [k, width] (+ bias)."""
  if kernel is None:
    kernel = module.param("kernel", _patch_init, kernel_shape)
  x = jnp.dot(patches.astype(dtype), kernel.astype(dtype))
  if config.use_bias:
    x = x + module.param("bias", nn.initializers.zeros,
                         (config.width,)).astype(dtype)
  return x


class VisionEmbed(nn.Module):
  """Images and videos -> tubelet tokens."""
  config: Config

  @nn.compact
  def __call__(self, x: jax.Array, is_image: bool):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    t, p, q = cfg.tubelet
    if cfg.vision_stem:
      x, (p, q) = self._stem(x, p, q, dtype)
    channels = x.shape[-1]
    kernel = self.param("kernel", _patch_init,
                        (t * p * q * channels, cfg.width))
    if is_image:
      patches, (gh, gw) = patchify(x, (p, q))
      grid = (1, gh, gw)
      # A clip of t copies of the image, folded into the kernel (the stem
      # works frame by frame, so its output is t copies too).
      kernel = kernel.reshape(t, p * q * channels, cfg.width).sum(axis=0)
    else:
      patches, grid = patchify(x, (t, p, q))
    tokens = _embed_patches(self, patches, None, cfg, dtype, kernel=kernel)
    pos = FactorizedPosEmbed(cfg.vision_pos_buckets, ("time", "height", "width"),
                             cfg.width, name="pos")(grid_coordinates(grid))
    return tokens + pos.astype(dtype), grid

  def _stem(self, x, p, q, dtype):
    """Frames [..., h, w, 3] -> features [..., h / s, w / s, c] and the patch
    (p / s, q / s) that covers a tubelet's pixels, s = 2 ** layers.

    Frames are first cropped to whole patches, as patchify would, so the
    convolutions' padding adds no token.
    """
    cfg = self.config
    (h, w), lead = x.shape[-3:-1], x.shape[:-3]
    if h < p or w < q:
      raise ValueError(f"Input of shape {x.shape[1:-1]} is smaller than one "
                       f"patch {(p, q)}.")
    x = x[..., :h // p * p, :w // q * q, :]
    y = x.reshape((-1,) + x.shape[-3:]).astype(dtype)
    for i, channels in enumerate(cfg.vision_stem):
      y = nn.Conv(channels, (3, 3), strides=(2, 2), padding="SAME",
                  use_bias=cfg.use_bias, dtype=dtype, name=f"stem_{i}")(y)
      y = nn.gelu(y)
    s = 2 ** len(cfg.vision_stem)
    return y.reshape(lead + y.shape[1:]), (p // s, q // s)


class SpectrogramEmbed(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x: jax.Array):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    patches, grid = patchify(x[..., None], cfg.spectrogram_patch)
    tokens = _embed_patches(self, patches,
                            (math.prod(cfg.spectrogram_patch), cfg.width),
                            cfg, dtype)
    pos = FactorizedPosEmbed(cfg.spectrogram_pos_buckets, ("time", "frequency"),
                             cfg.width, name="pos")(grid_coordinates(grid))
    return tokens + pos.astype(dtype), grid


class WaveformEmbed(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x: jax.Array):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    patches, grid = patchify(x[..., None], (cfg.waveform_patch,))
    tokens = _embed_patches(self, patches, (cfg.waveform_patch, cfg.width),
                            cfg, dtype)
    pos = FactorizedPosEmbed((cfg.waveform_pos_buckets,), ("time",), cfg.width,
                             name="pos")(grid_coordinates(grid))
    return tokens + pos.astype(dtype), grid


class TextEmbed(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, ids: jax.Array):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    table = self.param("embedding", nn.initializers.normal(stddev=0.02),
                       (cfg.vocab_size, cfg.width))
    tokens = table.astype(dtype)[ids]
    length = ids.shape[1]
    # Absolute positions while length <= buckets (the bucket of position i is
    # i), normalized beyond.
    scale = max(length, cfg.text_pos_buckets)
    coords = ((np.arange(length, dtype=np.float32) + 0.5) / scale)[:, None]
    pos = FactorizedPosEmbed((cfg.text_pos_buckets,), ("time",), cfg.width,
                             name="pos")(coords)
    return tokens + pos.astype(dtype), (length,)


def drop_tokens(rng: jax.Array, tokens: jax.Array, mask: jax.Array,
                rate: float):
  """DropToken: keeps round(n * (1 - rate)) random tokens of each example.

  Padding (mask False) is dropped first. Kept tokens stay in their original
  order; their positional embeddings are already added, so each keeps its own
  position.
  """
  b, n, _ = tokens.shape
  keep = max(1, int(round(n * (1.0 - rate))))
  if keep >= n:
    return tokens, mask
  noise = jax.random.uniform(rng, (b, n)) + (~mask).astype(jnp.float32)
  idx = jnp.sort(jnp.argsort(noise, axis=1)[:, :keep], axis=1)
  tokens = jnp.take_along_axis(tokens, idx[..., None], axis=1)
  mask = jnp.take_along_axis(mask, idx, axis=1)
  return tokens, mask
