"""The shared pre-LayerNorm Transformer encoder.

Block: x += Attention(LN(x)); x += MLP(LN(x)), where MLP is an MoE in the
blocks listed in `config.moe_layers`. Options: QK-LayerNorm (normalize queries
and keys per head before the dot product; IMP uses it for MoE models, it keeps
attention logits bounded) and bias-free Dense and LayerNorm layers (IMP's
default). A final LayerNorm is followed by masked global average pooling.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from impax.model.config import Config
from impax.model.moe import MoeMlp


def _dtype(cfg: Config):
  return jnp.dtype(cfg.dtype)


def layer_norm(cfg: Config, name: str) -> nn.LayerNorm:
  # Statistics are computed in float32 even for bfloat16 inputs.
  return nn.LayerNorm(epsilon=1e-6, use_bias=cfg.use_bias, dtype=_dtype(cfg),
                      name=name)


class Attention(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None):
    cfg = self.config
    heads, head_dim = cfg.num_heads, cfg.width // cfg.num_heads
    dense = lambda name: nn.DenseGeneral(
        (heads, head_dim), use_bias=cfg.use_bias, dtype=_dtype(cfg), name=name)
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)
    if cfg.qk_layernorm:
      q = layer_norm(cfg, "query_norm")(q)
      k = layer_norm(cfg, "key_norm")(k)
    if cfg.attention_impl == "cudnn" and mask is not None:
      # cuDNN takes padding as lengths: text is right-padded.
      lengths = mask.sum(axis=-1).astype(jnp.int32)
      out = jax.nn.dot_product_attention(
          q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
          implementation="cudnn")
    else:
      out = jax.nn.dot_product_attention(
          q, k, v, mask=None if mask is None else mask[:, None, None, :],
          implementation=cfg.attention_impl)
    return nn.DenseGeneral(cfg.width, axis=(-2, -1), use_bias=cfg.use_bias,
                           dtype=_dtype(cfg), name="out")(out)


class Mlp(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x: jax.Array):
    cfg = self.config
    x = nn.Dense(cfg.mlp_dim, use_bias=cfg.use_bias, dtype=_dtype(cfg),
                 name="wi")(x)
    x = nn.gelu(x)
    return nn.Dense(cfg.width, use_bias=cfg.use_bias, dtype=_dtype(cfg),
                    name="wo")(x)


class Block(nn.Module):
  config: Config
  is_moe: bool = False
  mesh: jax.sharding.Mesh | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, has_padding: bool):
    cfg = self.config
    y = layer_norm(cfg, "norm_attn")(x)
    x = x + Attention(cfg, name="attn")(y, mask if has_padding else None)
    y = layer_norm(cfg, "norm_mlp")(x)
    if self.is_moe:
      y, aux = MoeMlp(cfg, self.mesh, name="moe")(y, mask)
    else:
      y, aux = Mlp(cfg, name="mlp")(y), None
    return x + y, aux


class Encoder(nn.Module):
  """tokens [b, n, d], mask [b, n] -> (tokens, pooled [b, d], moe aux per layer).

  `has_padding` (static) says whether `mask` has any False entries; without
  padding attention skips masking.
  """
  config: Config
  mesh: jax.sharding.Mesh | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, has_padding: bool = True):
    cfg = self.config
    block_cls = nn.remat(Block, static_argnums=(3,)) if cfg.remat else Block
    moe_aux = {}
    for i in range(cfg.depth):
      is_moe = i in cfg.moe_layers
      x, aux = block_cls(cfg, is_moe, self.mesh if is_moe else None,
                         name=f"block_{i}")(x, mask, has_padding)
      if aux is not None:
        moe_aux[f"layer_{i}"] = aux
    x = layer_norm(cfg, "norm_final")(x)
    m = mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(x.astype(jnp.float32) * m, axis=1) / jnp.maximum(
        m.sum(axis=1), 1.0)
    return x, pooled, moe_aux
