"""Scanned layers: the same parameters' meaning, the same losses and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from impax.model import (Model, get_config, init_params, scan_params, sharding,
                         unscan_params)


def test_scan_params_round_trips_to_the_scanned_layout(tiny, tiny_params):
  scanned = scan_params(tiny_params, tiny)
  # Runs of identical blocks: tiny's dense blocks 0-1 and MoE blocks 2-3.
  assert {k for k in scanned["encoder"]} == {"blocks_0_1", "blocks_2_3", "norm_final"}
  assert scanned["encoder"]["blocks_2_3"]["moe"]["wi"].shape == (
      2, tiny.num_experts, tiny.width, tiny.mlp_dim)
  # What a scanned model initializes: the same tree, the same shapes.
  fresh = jax.eval_shape(lambda: init_params(
      get_config("tiny", scan_layers=True), jax.random.key(0)))
  assert jax.tree.structure(fresh) == jax.tree.structure(scanned)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), fresh, scanned)
  jax.tree.map(np.testing.assert_array_equal, unscan_params(scanned, tiny), tiny_params)


def test_a_train_state_converts_with_its_adam_moments(tiny, tiny_params):
  tx = optax.adamw(1e-3)
  state = {"params": tiny_params, "opt_state": tx.init(tiny_params)}
  scanned = scan_params(state, tiny)
  expected = tx.init(scanned["params"])
  assert jax.tree.structure(scanned["opt_state"]) == jax.tree.structure(expected)
  assert jax.tree.structure(unscan_params(scanned, tiny)) == jax.tree.structure(state)


def test_the_scanned_model_computes_the_unrolled_losses_and_gradients(
    tiny, tiny_params, make_inputs):
  inputs = make_inputs(batch=4, image=None, spectrogram=None, waveform=None)
  inputs["text"][:, 9:] = 0  # Padding, so attention is masked.

  def loss_and_grad(config, params):
    def loss_fn(params):
      out = Model(config).apply({"params": params}, inputs, train=True,
                                drop_token={"video": 0.5},
                                rngs={"droptoken": jax.random.key(1)})
      # Every example's video against every caption: a contrastive loss's logits.
      logits = out["video"]["embedding"] @ out["text"]["embedding"].T
      loss = jnp.mean(jax.nn.log_softmax(logits / 100.0, axis=-1).diagonal())
      return -loss + out["aux_loss"], out["moe"]
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

  (loss, moe), grads = loss_and_grad(tiny, tiny_params)
  scanned = get_config("tiny", scan_layers=True, remat="full")
  (scan_loss, scan_moe), scan_grads = loss_and_grad(scanned, scan_params(tiny_params, tiny))
  np.testing.assert_allclose(scan_loss, loss, rtol=1e-5)
  # The same routing: the same tokens per expert and drops in every layer.
  jax.tree.map(np.testing.assert_array_equal, scan_moe["experts"], moe["experts"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               unscan_params(scan_grads, tiny), grads)


def test_stacked_expert_weights_stay_on_the_expert_axis():
  config = get_config("MoE-B", scan_layers=True)
  params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  specs = sharding.param_specs(params)
  flat = jax.tree_util.tree_flatten_with_path(specs)[0]
  split = {jax.tree_util.keystr(p): s for p, s in flat if s != P()}
  # The layer axis comes first and is never split.
  assert split == {f"['encoder']['blocks_6_11']['moe']['{w}']": P(None, "expert", None, None)
                   for w in ("wi", "wo")}
