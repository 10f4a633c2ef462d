"""Sparse Mixture-of-Experts feed-forward layer.

Tokens are cut into routing groups of about `config.group_size` tokens; within
a group a float32 router scores every (token, expert) pair and each expert
gets a buffer of `capacity` slots:

  expert_choice (IMP's default; Zhou et al. 2022): every expert takes its
    `capacity` highest-scoring tokens, capacity = round(cf * S / E) for a group
    of S tokens and E experts. Every expert is exactly full; a token can be
    taken by several experts or by none ("dropped"). No load-balancing loss is
    needed, so it is 0 (as in IMP).
  token_choice (Switch / V-MoE): every token picks its top_k experts; an expert
    accepts tokens in priority order (all first choices in token order, then
    second choices, ...) until its capacity round(cf * top_k * S / E) is
    reached; the rest overflow and are dropped.

A token's output is the sum over the experts that took it of
router_probability(token, expert) * expert(token): the combine weight of a
slot is the router probability, not renormalized over the top_k (as in Switch,
V-MoE and IMP), so a token's weights sum to the probability mass of the
experts that processed it, at most 1.

Routing is expressed as per-slot token indices [G, E, C] rather than one-hot
dispatch tensors: dispatch is a gather and combine a scatter-add, so routing
costs memory traffic instead of the O(S^2 * D) matmuls of one-hot dispatch,
which on a CPU would cost about as much as the experts themselves.

Routing groups depend on the global batch and `group_size` alone (`group_tokens`),
never on the mesh: a model routes the same groups, and so computes the same
thing, on one device and on eight. With a mesh, the whole layer on routing
groups (`moe_groups`) runs inside `jax.shard_map` (see sharding.py for why):
each device holds whole groups and routes them, expert weights are split over
the mesh's 'expert' axis, and dispatched tokens travel to their expert's
device with one all-to-all and back with another.

Auxiliary losses (both averaged over real, non-padding tokens):
  load_balance_loss = E * sum_e f_e * P_e (Switch eq. 4), f_e the fraction of
    tokens whose top_k includes expert e, P_e the mean router probability of
    e. Equals top_k when routing is uniform, E when every token sends all
    probability to one expert.
  z_loss = mean(logsumexp(logits)^2) (ST-MoE), keeps router logits small.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from impax.model import sharding
from impax.model.config import Config


class Routing(NamedTuple):
  index: jax.Array  # int32 [G, E, C]: token of each expert slot; S = empty.
  weight: jax.Array  # float32 [G, E, C]: combine weight; 0 for empty slots.
  load_balance_loss: jax.Array
  z_loss: jax.Array


def expert_capacity(group_size: int, num_experts: int, capacity_factor: float,
                    top_k: int = 1) -> int:
  """Slots per expert and group; top_k > 1 only for token choice (V-MoE)."""
  c = int(round(capacity_factor * top_k * group_size / num_experts))
  return min(max(c, 1), group_size)


def _sum(x, axis_names):
  """Sum over this device's groups and, inside shard_map, over all devices."""
  x = jnp.sum(x, axis=(0, 1))
  return jax.lax.psum(x, axis_names) if axis_names else x


def z_loss(logits: jax.Array, valid: jax.Array, axis_names=None) -> jax.Array:
  v = valid.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  return _sum(v * lse**2, axis_names) / jnp.maximum(_sum(v, axis_names), 1.0)


def load_balance_loss(probs: jax.Array, expert: jax.Array, valid: jax.Array,
                      axis_names=None) -> jax.Array:
  """probs [G, S, E]; expert [G, S, K] chosen experts; valid [G, S]."""
  num_experts = probs.shape[-1]
  v = valid.astype(jnp.float32)[..., None]
  n = jnp.maximum(_sum(v, axis_names), 1.0)
  chosen = jax.nn.one_hot(expert, num_experts).max(axis=-2)
  fraction = _sum(chosen * v, axis_names) / n
  mean_prob = _sum(probs * v, axis_names) / n
  return num_experts * jnp.sum(fraction * mean_prob)


def route_expert_choice(logits: jax.Array, valid: jax.Array, capacity: int,
                        axis_names=None) -> Routing:
  """logits float32 [G, S, E]; valid bool [G, S]."""
  num_tokens = logits.shape[1]
  probs = jax.nn.softmax(logits, axis=-1)
  # Padding ranks below every real token: taken only if a group has fewer
  # real tokens than capacity, and then given zero weight.
  scores = jnp.where(valid[..., None], probs, -1.0)
  gate, index = jax.lax.top_k(jnp.swapaxes(scores, 1, 2), capacity)
  filled = gate >= 0
  return Routing(
      index=jnp.where(filled, index, num_tokens).astype(jnp.int32),
      weight=jnp.where(filled, gate, 0.0),
      load_balance_loss=jnp.zeros((), jnp.float32),
      z_loss=z_loss(logits, valid, axis_names))


def route_token_choice(logits: jax.Array, valid: jax.Array, capacity: int,
                       top_k: int, axis_names=None) -> Routing:
  """logits float32 [G, S, E]; valid bool [G, S]."""
  g, s, e = logits.shape
  probs = jax.nn.softmax(logits, axis=-1)
  gate, expert = jax.lax.top_k(probs, top_k)  # [G, S, K]
  lb_loss = load_balance_loss(probs, expert, valid, axis_names)
  # Rank-major order: all first choices (in token order), then second, ...
  expert = jnp.swapaxes(expert, 1, 2).reshape(g, top_k * s)
  gate = jnp.swapaxes(gate, 1, 2).reshape(g, top_k * s)
  valid_r = jnp.tile(valid, (1, top_k))
  onehot = jax.nn.one_hot(expert, e, dtype=jnp.int32) * valid_r[..., None]
  position = jnp.sum((jnp.cumsum(onehot, axis=1) - 1) * onehot, axis=-1)
  kept = valid_r & (position < capacity)
  # Overflowing and padding assignments land in an extra slot, cut off below.
  slot = jnp.where(kept, position, capacity)
  token = jnp.broadcast_to(jnp.tile(jnp.arange(s, dtype=jnp.int32), top_k),
                           (g, top_k * s))
  rows = jnp.arange(g)[:, None]
  index = jnp.full((g, e, capacity + 1), s, jnp.int32)
  index = index.at[rows, expert, slot].set(token)[..., :capacity]
  weight = jnp.zeros((g, e, capacity + 1), jnp.float32)
  weight = weight.at[rows, expert, slot].set(gate)[..., :capacity]
  return Routing(index=index, weight=weight, load_balance_loss=lb_loss,
                 z_loss=z_loss(logits, valid, axis_names))


def expert_stats(routing: Routing, valid: jax.Array,
                 axis_names=None) -> dict[str, jax.Array]:
  """How many tokens each expert took and how many tokens no expert took."""
  g, s = valid.shape
  filled = (routing.index < s).astype(jnp.int32)
  routed = jnp.zeros((g, s + 1), jnp.bool_)
  routed = routed.at[jnp.arange(g)[:, None, None], routing.index].set(True)
  count = lambda x: _sum(x.astype(jnp.int32)[..., None], axis_names)[0]
  return dict(
      tokens_per_expert=_sum(jnp.swapaxes(filled, 1, 2), axis_names),
      dropped_tokens=count(valid & ~routed[:, :s]),
      tokens=count(valid),
      expert_capacity=count(jnp.ones((g, routing.index.shape[-1]))))


class RoutingGroupsError(ValueError):
  """Routing groups that the mesh's batch shards cannot each hold whole."""


def examples_per_group(batch: int, length: int, group_size: int) -> int:
  """How many whole examples of `length` tokens one routing group packs: the most that fit
  in group_size tokens and divide the (global) batch. 1 for long sequences."""
  return max(i for i in range(1, batch + 1)
             if batch % i == 0 and i * length <= max(group_size, length))


def group_tokens(x: jax.Array, mask: jax.Array, group_size: int,
                 batch_shards: int):
  """[b, n, d] -> [G, S, d] routing groups, with the inverse.

  Long sequences (n >= group_size) are split into equal groups of about
  group_size tokens, padded at the end. Short ones are packed, whole examples
  at a time, into groups of at most group_size tokens. The groups are a
  function of the global batch and group_size alone, so routing, and so the
  result, is the same on one device and on many. Each device holds whole
  groups, so routing stays local to it; a batch whose groups do not divide
  among the batch shards is refused, with the group_size that would.
  """
  b, n, d = x.shape
  if b % batch_shards:
    raise ValueError(f"Batch {b} is not divisible by the {batch_shards} batch "
                     "shards of the mesh.")
  if n >= group_size:
    k = -(-n // group_size)
    s = -(-n // k)
    pad = k * s - n
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad)))
    ungroup = lambda y: y.reshape(b, k * s, -1)[:, :n]
    return x.reshape(b * k, s, d), mask.reshape(b * k, s), ungroup
  e = examples_per_group(b, n, group_size)
  if (b // e) % batch_shards:
    fits = examples_per_group(b // batch_shards, n, group_size) * n
    raise RoutingGroupsError(
        f"routing groups of {e} examples of {n} tokens (group_size {group_size}) make "
        f"{b // e} groups of a batch of {b}, which the mesh's {batch_shards} batch shards "
        f"cannot each hold whole: set the model's group_size to {fits} "
        f"(model_overrides=((\"group_size\", {fits}),)) to route the same groups on any "
        f"device count, or make the batch a multiple of {e * batch_shards}")
  ungroup = lambda y: y.reshape(b, n, -1)
  return x.reshape(b // e, e * n, d), mask.reshape(b // e, e * n), ungroup


def _expert_mlp(x, params, dtype):
  """x [G, E, C, D] -> [G, E, C, D], expert e applied to x[:, e]."""
  g, e, c, d = x.shape
  # Expert-major [E, G*C, D]: one plain batched matmul per weight (about 30%
  # faster on CPU than contracting the 4-D layout directly).
  x = jnp.swapaxes(x, 0, 1).reshape(e, g * c, d)
  h = jnp.einsum("etd,edf->etf", x, params["wi"].astype(dtype))
  if "bi" in params:
    h = h + params["bi"][:, None, :].astype(dtype)
  h = nn.gelu(h)
  y = jnp.einsum("etf,efd->etd", h, params["wo"].astype(dtype))
  if "bo" in params:
    y = y + params["bo"][:, None, :].astype(dtype)
  return jnp.swapaxes(y.reshape(e, g, c, d), 0, 1)


def moe_groups(x, valid, params, config: Config, axis_names=None):
  """The MoE on routing groups: x [G, S, D], valid [G, S] -> (y, aux).

  On one device `axis_names` is None. Inside shard_map it names the mesh axes
  the groups are split over: the experts' inputs then travel by all-to-all
  over the expert axis, and losses and statistics are summed over all axes.
  """
  cfg = config
  dtype = jnp.dtype(cfg.dtype)
  g, s, d = x.shape
  e = cfg.num_experts
  # The router always runs in float32 (Switch's "selective precision").
  logits = jnp.einsum("gsd,de->gse", x.astype(jnp.float32), params["router"])
  if cfg.router == "expert_choice":
    capacity = expert_capacity(s, e, cfg.capacity_factor)
    routing = route_expert_choice(logits, valid, capacity, axis_names)
  else:
    capacity = expert_capacity(s, e, cfg.capacity_factor, cfg.top_k)
    routing = route_token_choice(logits, valid, capacity, cfg.top_k,
                                 axis_names)

  # Dispatch: gather each slot's token; index s reads a row of zeros.
  xpad = jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1).astype(dtype)
  dispatched = jax.vmap(lambda t, i: t[i])(xpad, routing.index)  # [G,E,C,D]
  experts = {k: v for k, v in params.items() if k != "router"}
  if axis_names:
    # [G_local, E, C, D] -> [G_local * n_expert, E / n_expert, C, D]: each
    # device of an expert row receives the slots of its own experts.
    dispatched = jax.lax.all_to_all(dispatched, sharding.EXPERT_AXIS, 1, 0,
                                    tiled=True)
  out = _expert_mlp(dispatched, experts, dtype)
  if axis_names:
    out = jax.lax.all_to_all(out, sharding.EXPERT_AXIS, 0, 1, tiled=True)
  # Combine: weighted scatter-add back to the tokens, accumulated in float32.
  weighted = out.astype(jnp.float32) * routing.weight[..., None]
  y = jax.vmap(lambda o, i: jnp.zeros((s + 1, d), jnp.float32).at[
      i.reshape(-1)].add(o.reshape(-1, d)))(weighted, routing.index)

  aux = dict(load_balance_loss=routing.load_balance_loss,
             z_loss=routing.z_loss,
             **jax.lax.stop_gradient(expert_stats(routing, valid, axis_names)))
  return y[:, :s].astype(dtype), aux


_expert_init = nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=0)


class MoeMlp(nn.Module):
  """Drop-in replacement for the dense MLP: (x [b, n, d], mask) -> (y, aux)."""
  config: Config
  mesh: jax.sharding.Mesh | None = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array):
    cfg = self.config
    d, e = x.shape[-1], cfg.num_experts
    params = {
        "router": self.param("router", nn.initializers.normal(stddev=0.02),
                             (d, e)),
        "wi": self.param("wi", _expert_init, (e, d, cfg.mlp_dim)),
        "wo": self.param("wo", _expert_init, (e, cfg.mlp_dim, d)),
    }
    if cfg.use_bias:
      params["bi"] = self.param("bi", nn.initializers.zeros, (e, cfg.mlp_dim))
      params["bo"] = self.param("bo", nn.initializers.zeros, (e, d))

    xg, valid, ungroup = group_tokens(x, mask, cfg.group_size,
                                      sharding.batch_shards(self.mesh))
    if self.mesh is None:
      y, aux = moe_groups(xg, valid, params, cfg)
    else:
      # Everything but the two all-to-alls is local to a device's groups.
      specs = {k: P() if k == "router" else P(sharding.EXPERT_AXIS)
               for k in params}
      batch = P(sharding.BATCH_AXES)
      y, aux = jax.shard_map(
          lambda x, v, p: moe_groups(x, v, p, cfg, sharding.BATCH_AXES),
          mesh=self.mesh, in_specs=(batch, batch, specs),
          out_specs=(batch, P()))(xg, valid, params)
    return ungroup(y), aux
