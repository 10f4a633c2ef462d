"""Routing invariants, auxiliary losses and the MoE layer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impax.model import Model, get_config, moe


# Jitted once per shape: op-by-op dispatch would compile every small op.
route_expert_choice = jax.jit(moe.route_expert_choice, static_argnums=2)
route_token_choice = jax.jit(moe.route_token_choice, static_argnums=(2, 3))
expert_stats = jax.jit(moe.expert_stats)


def _logits(g=3, s=32, e=4, seed=0):
  return jax.random.normal(jax.random.key(seed), (g, s, e)) * 2.0


def _slots(routing, s):
  """[(group, expert, token, weight)] of every filled slot."""
  index, weight = np.asarray(routing.index), np.asarray(routing.weight)
  return [(g, e, index[g, e, c], weight[g, e, c])
          for g, e, c in zip(*np.nonzero(index < s))]


def test_capacity():
  assert moe.expert_capacity(2048, 16, 1.0) == 128
  assert moe.expert_capacity(2048, 16, 1.0, top_k=2) == 256
  assert moe.expert_capacity(10, 4, 1.0) == 2  # round(2.5) -> 2 (to even).
  assert moe.expert_capacity(4, 16, 1.0) == 1  # At least one slot.
  assert moe.expert_capacity(8, 2, 8.0) == 8  # At most the whole group.


def test_expert_choice_fills_every_expert_to_capacity():
  g, s, e = 3, 32, 4
  logits = _logits(g, s, e)
  valid = jnp.ones((g, s), bool)
  capacity = moe.expert_capacity(s, e, 1.0)
  routing = route_expert_choice(logits, valid, capacity)
  assert routing.index.shape == (g, e, capacity)
  assert np.all(np.asarray(routing.index) < s)  # No empty slot.
  for gi in range(g):
    for ei in range(e):
      assert len(set(np.asarray(routing.index[gi, ei]))) == capacity
  # Each expert took its highest-probability tokens, weighted by probability.
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  for gi, ei, t, w in _slots(routing, s):
    np.testing.assert_allclose(w, probs[gi, t, ei], rtol=1e-6)
    assert w >= np.sort(probs[gi, :, ei])[-capacity] - 1e-7
  stats = expert_stats(routing, valid)
  np.testing.assert_array_equal(stats["tokens_per_expert"], [g * capacity] * e)
  assert int(stats["expert_capacity"]) == g * capacity


def test_expert_choice_prefers_real_tokens_over_padding():
  g, s, e = 2, 16, 2
  valid = jnp.arange(s)[None, :].repeat(g, 0) < jnp.array([[12], [5]])
  routing = route_expert_choice(_logits(g, s, e), valid, capacity=8)
  for gi, ei, t, w in _slots(routing, s):
    assert valid[gi, t]
  # Group 1 has 5 real tokens for 8 slots: 3 slots per expert stay empty.
  assert np.sum(np.asarray(routing.index[1]) == s) == 2 * 3
  assert np.all(np.asarray(routing.weight)[np.asarray(routing.index) == s] == 0)
  stats = expert_stats(routing, valid)
  assert int(stats["tokens"]) == 17
  np.testing.assert_array_equal(stats["tokens_per_expert"], [8 + 5, 8 + 5])


@pytest.mark.parametrize("top_k", [1, 2])
def test_token_choice_never_exceeds_capacity(top_k):
  g, s, e = 4, 64, 4
  # Skewed router: most tokens prefer expert 0.
  logits = _logits(g, s, e).at[..., 0].add(2.0)
  valid = jnp.ones((g, s), bool)
  capacity = moe.expert_capacity(s, e, 1.0, top_k)
  routing = route_token_choice(logits, valid, capacity, top_k)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  top = np.argsort(-probs, axis=-1)[..., :top_k]
  per_expert = np.zeros((g, e), int)
  per_token = np.zeros((g, s), int)
  for gi, ei, t, w in _slots(routing, s):
    per_expert[gi, ei] += 1
    per_token[gi, t] += 1
    assert ei in top[gi, t]  # Only to one of its own top-k experts.
    np.testing.assert_allclose(w, probs[gi, t, ei], rtol=1e-6)
  assert per_expert.max() <= capacity
  assert per_expert[:, 0].min() == capacity  # The popular expert is full.
  assert per_token.max() <= top_k
  stats = expert_stats(routing, valid)
  np.testing.assert_array_equal(stats["tokens_per_expert"], per_expert.sum(0))
  assert int(stats["dropped_tokens"]) == int(np.sum(per_token == 0))


def test_token_choice_keeps_tokens_in_order_until_full():
  # Every token wants expert 0: the first `capacity` tokens get it.
  g, s, e = 1, 16, 4
  logits = jnp.zeros((g, s, e)).at[..., 0].set(5.0)
  routing = route_token_choice(logits, jnp.ones((g, s), bool), 4, 1)
  np.testing.assert_array_equal(routing.index[0, 0], [0, 1, 2, 3])
  assert np.all(np.asarray(routing.index[0, 1:]) == s)
  stats = expert_stats(routing, jnp.ones((g, s), bool))
  assert int(stats["dropped_tokens"]) == s - 4


@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_combine_weights_sum_to_the_probability_of_the_chosen_experts(router):
  g, s, e, k = 2, 32, 4, 2
  logits = _logits(g, s, e, seed=3)
  valid = jnp.ones((g, s), bool)
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  if router == "expert_choice":
    routing = route_expert_choice(logits, valid, 8)
  else:  # Room for everyone: every token gets both of its top-2 experts.
    routing = route_token_choice(logits, valid, s, k)
  total = np.zeros((g, s))
  chosen = np.zeros((g, s, e), bool)
  for gi, ei, t, w in _slots(routing, s):
    total[gi, t] += w
    chosen[gi, t, ei] = True
  np.testing.assert_allclose(total, np.sum(probs * chosen, axis=-1), rtol=1e-5)
  assert np.all(total <= 1 + 1e-6)
  if router == "token_choice":
    np.testing.assert_allclose(total, np.sort(probs, -1)[..., -k:].sum(-1),
                               rtol=1e-5)


def test_aux_losses_on_crafted_logits():
  g, s, e = 2, 16, 4
  valid = jnp.ones((g, s), bool)
  uniform = jnp.zeros((g, s, e))
  # Uniform router: balance loss is top_k, z-loss is log(E)^2.
  for k in (1, 2):
    r = route_token_choice(uniform, valid, s, k)
    np.testing.assert_allclose(r.load_balance_loss, k, rtol=1e-6)
    np.testing.assert_allclose(r.z_loss, math.log(e) ** 2, rtol=1e-6)
  # Every token puts all its mass on expert 0: balance loss is E.
  collapsed = uniform.at[..., 0].set(30.0)
  r = route_token_choice(collapsed, valid, s, 1)
  np.testing.assert_allclose(r.load_balance_loss, e, rtol=1e-5)
  np.testing.assert_allclose(r.z_loss, 30.0**2, rtol=1e-5)
  # Perfectly balanced, confident routing: token t -> expert t % E.
  balanced = jax.nn.one_hot(jnp.arange(s) % e, e)[None].repeat(g, 0) * 30.0
  r = route_token_choice(balanced, valid, s, 1)
  np.testing.assert_allclose(r.load_balance_loss, 1.0, rtol=1e-5)
  # Expert choice is balanced by construction: no balance loss.
  r = route_expert_choice(collapsed, valid, 4)
  assert float(r.load_balance_loss) == 0.0
  np.testing.assert_allclose(r.z_loss, 30.0**2, rtol=1e-5)
  # Padding does not count: huge logits on padded tokens change nothing.
  half = jnp.arange(s)[None].repeat(g, 0) < s // 2
  noisy = uniform.at[:, s // 2:, 0].set(1e3)
  r = route_token_choice(noisy, half, s, 1)
  np.testing.assert_allclose(r.load_balance_loss, 1.0, rtol=1e-6)
  np.testing.assert_allclose(r.z_loss, math.log(e) ** 2, rtol=1e-6)


def test_z_loss_gradient_shrinks_logits():
  logits = _logits()
  grad = jax.grad(lambda l: moe.z_loss(l, jnp.ones(l.shape[:2], bool)))(logits)
  step = logits - 0.1 * grad
  assert float(jnp.abs(jax.nn.logsumexp(step, -1)).mean()) < float(
      jnp.abs(jax.nn.logsumexp(logits, -1)).mean())


def test_group_tokens():
  x = jnp.arange(4 * 10 * 2, dtype=jnp.float32).reshape(4, 10, 2)
  mask = jnp.ones((4, 10), bool)
  # Short sequences: whole examples packed; the groups depend on the batch and group_size
  # alone, whatever the batch shards (devices).
  xg, valid, ungroup = moe.group_tokens(x, mask, 25, batch_shards=1)
  assert xg.shape == (2, 20, 2)
  np.testing.assert_array_equal(ungroup(xg), x)
  xg2, _, _ = moe.group_tokens(x, mask, 25, batch_shards=2)
  np.testing.assert_array_equal(xg2, xg)
  # Four shards cannot each hold one of two groups: refused, with the group_size that fits
  # (one example a group), rather than grouped per shard, which changed the result.
  with pytest.raises(moe.RoutingGroupsError, match=r"routing groups of 2 examples of 10 tokens "
                     r"\(group_size 25\) make 2 groups of a batch of 4, which the mesh's 4 "
                     r"batch shards cannot each hold whole: set the model's group_size to 10 "
                     r".* or make the batch a multiple of 8"):
    moe.group_tokens(x, mask, 25, batch_shards=4)
  xg, _, _ = moe.group_tokens(x, mask, 10, batch_shards=4)
  assert xg.shape == (4, 10, 2)
  # Long sequences: split into equal groups, padded at the end.
  xg, valid, ungroup = moe.group_tokens(x, mask, 4, batch_shards=2)
  assert xg.shape == (4 * 3, 4, 2)
  assert int(valid.sum()) == 40
  np.testing.assert_array_equal(ungroup(xg), x)
  with pytest.raises(ValueError, match="not divisible"):
    moe.group_tokens(x, mask, 25, batch_shards=3)


def test_single_expert_with_full_capacity_is_the_dense_mlp():
  config = get_config("tiny", num_experts=1, capacity_factor=1.0)
  layer = moe.MoeMlp(config)
  x = jax.random.normal(jax.random.key(0), (2, 8, config.width))
  mask = jnp.ones((2, 8), bool)
  params = jax.jit(layer.init)(jax.random.key(1), x, mask)["params"]
  y, aux = jax.jit(layer.apply)({"params": params}, x, mask)
  h = jax.nn.gelu(jnp.einsum("bnd,df->bnf", x, params["wi"][0]))
  dense = jnp.einsum("bnf,fd->bnd", h, params["wo"][0])
  np.testing.assert_allclose(y, dense, rtol=1e-4, atol=1e-5)  # Weight p = 1.
  assert int(aux["dropped_tokens"]) == 0
  np.testing.assert_array_equal(aux["tokens_per_expert"], [16])


@pytest.mark.parametrize("router,top_k,every_expert", [
    ("expert_choice", 1, True),  # Every expert is full by construction.
    ("token_choice", 4, True),  # Every token visits all 4 experts.
    # At init, similar noise tokens rank the same experts first: an expert in
    # no token's top 2 gets no tokens and so, correctly, no gradient.
    ("token_choice", 2, False),
])
def test_gradients_reach_every_expert_that_gets_tokens(
    tiny_params, make_inputs, router, top_k, every_expert):
  config = get_config("tiny", router=router, top_k=top_k)
  inputs = make_inputs(batch=4, image=None, spectrogram=None, waveform=None,
                       text=None)
  target = jax.random.normal(jax.random.key(2), (4, config.embed_dim))

  def loss(params):
    out = Model(config).apply({"params": params}, inputs)
    loss = jnp.mean((out["video"]["embedding"] - target) ** 2)
    return loss + out["aux_loss"], out["moe"]["experts"]["video"]

  grads, stats = jax.jit(jax.grad(loss, has_aux=True))(tiny_params)
  for i in config.moe_layers:
    used = np.asarray(stats[f"layer_{i}"]["tokens_per_expert"]) > 0
    assert used.all() == every_expert
    g = grads["encoder"][f"block_{i}"]["moe"]
    for name in ("wi", "wo"):
      norm = np.asarray(jnp.sqrt(jnp.sum(g[name] ** 2, axis=(1, 2))))
      np.testing.assert_array_equal(norm > 0, used, err_msg=f"{i} {name}")
    assert float(jnp.abs(g["router"]).sum()) > 0
