"""Parameter and FLOP counts of a preset; the `impax model info PRESET` command.

    impax model info MoE-B
    impax model info MoE-B --tokens 1024

Parameter counts come from the shapes of the real initialized parameters
(`jax.eval_shape` of `init_params`, nothing is allocated). FLOPs are counted
from the same shapes for one vision token in a sequence of `--tokens` tokens
(default 256: an image in IMP, 4 x 256 x 256 in 4 x 16 x 16 tubelets).

Counts printed:
  total_params             every parameter: all embedders (including the
                           32,100-row text table), the encoder with all
                           experts, projection and classification heads.
  encoder_params           the shared, modality-agnostic Transformer (all
                           experts included): what IMP quotes for its sizes
                           (S 21M, B 86M, L 306M).
  active_params_per_token  parameters one vision token is multiplied with: the
                           tubelet kernel and the encoder, where an MoE layer
                           counts its router plus the experts a token visits on
                           average (expert choice: capacity_factor; token
                           choice: top_k, an upper bound).
  flops_per_token          forward FLOPs of that token (2 per multiply-add,
                           attention scores included); train_flops_per_token is
                           3x that (forward + backward).
"""

import dataclasses
import math

import jax

from impax.model.config import Config


def _param_shapes(config: Config):
  from impax.model.imp import init_params  # Keeps `--help` fast.
  # Counted in the unrolled layout ("block_{i}"), the same numbers either way.
  config = dataclasses.replace(config, scan_layers=False)
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def _size(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def experts_per_token(config: Config) -> float:
  if config.router == "expert_choice":
    return config.capacity_factor
  return float(config.top_k)


def layer_layout(config: Config) -> list[dict]:
  layers = []
  for i in range(config.depth):
    if i in config.moe_layers:
      layers.append(dict(index=i, mlp="moe", num_experts=config.num_experts,
                         router=config.router,
                         top_k=config.top_k if config.router == "token_choice"
                         else None,
                         capacity_factor=config.capacity_factor,
                         group_size=config.group_size))
    else:
      layers.append(dict(index=i, mlp="dense"))
  return layers


def info(config: Config, tokens: int = 256) -> dict:
  params = _param_shapes(config)
  encoder = params["encoder"]
  vision_kernel = _size({k: v for k, v in params["vision_embed"].items()
                         if k != "pos"})
  experts = sum(_size({k: v for k, v in encoder[f"block_{i}"]["moe"].items()
                       if k != "router"}) for i in config.moe_layers)
  visits = experts_per_token(config)
  active_experts = sum(
      visits * _size({k: v for k, v in encoder[f"block_{i}"]["moe"].items()
                      if k != "router"}) / config.num_experts
      for i in config.moe_layers)
  active = vision_kernel + _size(encoder) - experts + active_experts

  w, f = config.width, config.mlp_dim
  # Patch embedding, after the convolutional stem if there is one: each stem
  # layer quarters the positions a token's pixels cover.
  positions, channels = math.prod(config.tubelet), 3
  flops = 0
  for out in config.vision_stem:
    positions //= 4
    flops += 2 * positions * 9 * channels * out
    channels = out
  flops += 2 * positions * channels * w
  for i in range(config.depth):
    flops += 2 * 4 * w * w + 2 * 2 * tokens * w  # Projections; QK^T and AV.
    if i in config.moe_layers:
      flops += 2 * w * config.num_experts + visits * 2 * 2 * w * f
    else:
      flops += 2 * 2 * w * f

  return {
      "preset": config.name,
      "total_params": _size(params),
      "encoder_params": _size(encoder),
      "active_params_per_token": int(round(active)),
      "expert_params": experts,
      "params_by_module": {k: _size(v) for k, v in params.items()},
      "flops_per_token": int(round(flops)),
      "train_flops_per_token": int(round(3 * flops)),
      "tokens_per_sequence": tokens,
      "experts_per_token": visits if config.moe_layers else 0,
      "layers": layer_layout(config),
      "config": dataclasses.asdict(config),
  }
