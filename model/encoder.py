"""The shared pre-LayerNorm Transformer encoder.

Block: x += Attention(LN(x)); x += MLP(LN(x)), where MLP is an MoE in the
blocks listed in `config.moe_layers`. Options: QK-LayerNorm (normalize queries
and keys per head before the dot product; IMP uses it for MoE models, it keeps
attention logits bounded) and bias-free Dense and LayerNorm layers (IMP's
default). A final LayerNorm is followed by masked global average pooling.

Two knobs change how the same computation compiles, never what it computes:

  scan_layers  Each run of consecutive identical blocks (IMP-MoE-B: blocks
               0-5 dense, 6-11 MoE) runs under `nn.scan`, so XLA compiles one
               block per run instead of one per layer. The run's parameters
               are stacked on a leading layer axis under one name,
               "blocks_{first}_{last}", in place of "block_{i}";
               `scan_params` and `unscan_params` convert a tree (parameters,
               or a whole train state holding them) between the two layouts.
  remat        What a block keeps from its forward pass for the backward one
               (config.REMAT); everything else is recomputed in the backward
               pass, inside the block (jax.checkpoint, with REMAT_POLICIES).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from impax.model.config import REMAT, Config
from impax.model.moe import MoeMlp

# config.remat -> jax.checkpoint policy (None: save nothing but the block's input).
REMAT_POLICIES = {
    "full": None,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
assert set(REMAT_POLICIES) == set(REMAT) - {"none"}


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
  """(x, mask) -> (x, MoE aux or None). `has_padding` (static) says whether
  `mask` has any False entries; without padding attention skips masking."""
  config: Config
  is_moe: bool = False
  mesh: jax.sharding.Mesh | None = None
  has_padding: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array):
    cfg = self.config
    y = layer_norm(cfg, "norm_attn")(x)
    x = x + Attention(cfg, name="attn")(y, mask if self.has_padding else None)
    y = layer_norm(cfg, "norm_mlp")(x)
    if self.is_moe:
      y, aux = MoeMlp(cfg, self.mesh, name="moe")(y, mask)
    else:
      y, aux = Mlp(cfg, name="mlp")(y), None
    return x + y, aux


def layer_runs(config: Config) -> list[range]:
  """The encoder's runs of consecutive identical blocks (dense or MoE), in order."""
  runs = []
  for i in range(config.depth):
    if runs and (i in config.moe_layers) == (runs[-1][0] in config.moe_layers):
      runs[-1] = range(runs[-1][0], i + 1)
    else:
      runs.append(range(i, i + 1))
  return runs


def run_name(run: range) -> str:
  """The parameter name of a scanned run of blocks."""
  return f"blocks_{run[0]}_{run[-1]}"


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
    block_cls = Block
    if cfg.remat != "none":
      # Under scan the recomputation cannot be merged with the forward pass
      # anyway, so common-subexpression elimination needs no barrier there.
      block_cls = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat],
                           prevent_cse=not cfg.scan_layers)
    moe_aux = {}
    for run in layer_runs(cfg):
      is_moe = run[0] in cfg.moe_layers
      mesh = self.mesh if is_moe else None
      if cfg.scan_layers:
        scanned = nn.scan(block_cls, variable_axes={"params": 0},
                          split_rngs={"params": True}, in_axes=nn.broadcast,
                          length=len(run))
        x, aux = scanned(cfg, is_moe, mesh, has_padding,
                         name=run_name(run))(x, mask)
        if aux is not None:  # Stacked on a leading layer axis.
          moe_aux.update({f"layer_{i}": jax.tree.map(lambda a: a[j], aux)
                          for j, i in enumerate(run)})
      else:
        for i in run:
          x, aux = block_cls(cfg, is_moe, mesh, has_padding,
                             name=f"block_{i}")(x, mask)
          if aux is not None:
            moe_aux[f"layer_{i}"] = aux
    x = layer_norm(cfg, "norm_final")(x)
    m = mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(x.astype(jnp.float32) * m, axis=1) / jnp.maximum(
        m.sum(axis=1), 1.0)
    return x, pooled, moe_aux


def _convert_encoders(tree, config: Config, convert):
  """Applies `convert` to every encoder parameter dict in `tree`: a parameter
  tree, or anything holding some (a train state: parameters and Adam's moments)."""
  is_params = lambda x: isinstance(x, dict) and isinstance(x.get("encoder"), dict)
  return jax.tree.map(
      lambda x: {**x, "encoder": convert(x["encoder"])} if is_params(x) else x,
      tree, is_leaf=is_params)


def scan_params(tree, config: Config):
  """Unrolled ("block_{i}") encoder parameters -> scanned ("blocks_{a}_{b}",
  stacked on a leading layer axis), for a model with `scan_layers=True`."""
  def convert(encoder):
    out = {k: v for k, v in encoder.items() if not k.startswith("block_")}
    for run in layer_runs(config):
      out[run_name(run)] = jax.tree.map(
          lambda *layers: jnp.stack(layers),
          *(encoder[f"block_{i}"] for i in run))
    return out
  return _convert_encoders(tree, config, convert)


def unscan_params(tree, config: Config):
  """The inverse of `scan_params`: scanned encoder parameters -> unrolled."""
  def convert(encoder):
    out = {k: v for k, v in encoder.items() if not k.startswith("blocks_")}
    for run in layer_runs(config):
      stacked = encoder[run_name(run)]
      for j, i in enumerate(run):
        out[f"block_{i}"] = jax.tree.map(lambda a: a[j], stacked)
    return out
  return _convert_encoders(tree, config, convert)
