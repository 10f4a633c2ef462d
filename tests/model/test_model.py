"""The whole model: parameters, determinism, a training step, bfloat16."""

import statistics
import time

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from impax.model import Model, get_config
from impax.model.config import REMAT
from impax.train import objectives


def test_init_creates_every_embedder_and_head(tiny, tiny_params):
  assert set(tiny_params) == {
      "vision_embed", "spectrogram_embed", "waveform_embed", "text_embed",
      "encoder", "proj_vision", "proj_spectrogram", "proj_waveform",
      "proj_text", "head_imagenet", "head_kinetics700", "head_esc50",
      "temperature"}
  assert set(tiny_params["encoder"]) == {
      *(f"block_{i}" for i in range(tiny.depth)), "norm_final"}
  for i in range(tiny.depth):
    block = tiny_params["encoder"][f"block_{i}"]
    assert ("moe" in block) == (i in tiny.moe_layers)
    assert "query_norm" in block["attn"]  # QK-LayerNorm.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tiny_params))
  # Bias-free: no Dense or LayerNorm has a bias.
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(tiny_params["encoder"])[0]]
  assert not any("bias" in p for p in paths)


def test_unknown_inputs_are_rejected(tiny, tiny_params):
  with pytest.raises(ValueError, match="Unknown model inputs"):
    jax.eval_shape(lambda: Model(tiny).apply(
        {"params": tiny_params}, {"vidoe": jnp.zeros((1, 2, 8, 8, 3))}))


def test_same_params_inputs_and_rng_give_identical_outputs(
    tiny, tiny_params, make_inputs):
  inputs = make_inputs(batch=2, image=None, waveform=None)

  def apply(params, inputs, rng):
    return Model(tiny).apply(
        {"params": params}, inputs, train=True,
        drop_token={"video": 0.5, "spectrogram": 0.25},
        rngs={"droptoken": rng})

  first = jax.jit(apply)(tiny_params, inputs, jax.random.key(7))
  again = jax.jit(apply)(tiny_params, inputs, jax.random.key(7))  # Retraced.
  jax.tree.map(np.testing.assert_array_equal, first, again)
  other = jax.jit(apply)(tiny_params, inputs, jax.random.key(8))
  assert not np.array_equal(first["video"]["pooled"], other["video"]["pooled"])
  # Text has no DropToken rate: unaffected by the rng.
  np.testing.assert_array_equal(first["text"]["pooled"],
                                other["text"]["pooled"])


def test_tiny_training_step_runs_well_under_a_second(tiny, tiny_params,
                                                      make_inputs):
  model = Model(tiny)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-7,
                               weight_decay=1e-4))
  inputs = make_inputs(batch=8, image=None, spectrogram=None, waveform=None)

  @jax.jit
  def step(params, opt_state, inputs, rng):
    def loss_fn(params):
      out = model.apply({"params": params}, inputs, train=True,
                        drop_token={"video": 0.5}, rngs={"droptoken": rng})
      video, text = out["video"]["embedding"], out["text"]["embedding"]
      loss, _ = objectives.infonce(video, text, out["temperature"]["vision_text"],
                                   jnp.ones(video.shape[0], bool))
      return loss + out["aux_loss"]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params, opt_state = tiny_params, tx.init(tiny_params)
  losses, times = [], []
  for i in range(8):
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, inputs,
                                   jax.random.key(i))
    loss = float(loss)
    times.append(time.perf_counter() - start)
    losses.append(loss)
  median = statistics.median(times[2:])  # After compilation.
  print(f"tiny step times (s): {times}")
  assert median < 1.0, times
  assert np.isfinite(losses).all()
  assert losses[-1] < losses[0]  # It learns to match this batch.


def test_bfloat16_compute_gives_close_float32_outputs(tiny_params, make_inputs):
  inputs = make_inputs(batch=2, image=None, spectrogram=None, waveform=None)
  outs = {}
  for dtype in ("float32", "bfloat16"):
    model = Model(get_config("tiny", dtype=dtype))
    outs[dtype] = jax.jit(lambda p, x: model.apply({"params": p}, x))(
        tiny_params, inputs)
  for modality in ("video", "text"):
    assert outs["bfloat16"][modality]["embedding"].dtype == jnp.float32
    a = outs["float32"][modality]["pooled"]
    b = outs["bfloat16"][modality]["pooled"]
    cosine = jnp.sum(a * b, -1) / jnp.linalg.norm(a, axis=-1) / jnp.linalg.norm(
        b, axis=-1)
    assert float(cosine.min()) > 0.99


def equations(jaxpr):
  """Every equation of a jaxpr, those of the jaxprs inside it (jit, scan, remat) too."""
  for eqn in jaxpr.eqns:
    yield eqn
    for inner in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from equations(inner)


def test_bfloat16_keeps_the_routers_choices_in_float32(tiny, tiny_params, make_inputs):
  """The MoE router's logits (tokens [.., width] x router [width, experts]) and its top-k
  choices run in float32 when the model computes in bfloat16 (Switch's selective precision)."""
  inputs = make_inputs(batch=2, image=None, spectrogram=None, waveform=None)
  model = Model(get_config("tiny", dtype="bfloat16"))
  jaxpr = jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x))(tiny_params, inputs).jaxpr
  found = list(equations(jaxpr))
  routers = [e for e in found if e.primitive.name == "dot_general"
             and e.invars[1].aval.shape == (tiny.width, tiny.num_experts)]
  # one per MoE layer and modality (video, text)
  assert len(routers) >= 2 * len(tiny.moe_layers)
  for e in routers:
    assert [v.aval.dtype for v in (*e.invars, *e.outvars)] == [jnp.float32] * 3
  bf16 = [e for e in found if e.primitive.name == "dot_general"
          and e.outvars[0].aval.dtype == jnp.bfloat16]
  assert bf16  # the rest of the model does compute in bfloat16
  top_k = [e for e in found if e.primitive.name == "top_k"]
  assert top_k and all(e.invars[0].aval.dtype == jnp.float32 for e in top_k)


def test_remat_policies_change_memory_not_results(tiny_params, make_inputs):
  # What each saves is measured at IMP's sizes (benchmarks/model_memory.py).
  inputs = make_inputs(batch=2, image=None, spectrogram=None, waveform=None,
                       text=None)
  grads = {}
  for remat in REMAT:
    config = get_config("tiny", remat=remat)
    loss = lambda p: jnp.sum(Model(config).apply(
        {"params": p}, inputs)["video"]["embedding"] ** 2)
    grads[remat] = jax.jit(jax.grad(loss))(tiny_params)
  for remat in REMAT:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads[remat], grads["none"])


def test_remat_was_a_boolean():
  assert get_config("tiny", remat=True).remat == "full"
  assert get_config("tiny", remat=False).remat == "none"
  with pytest.raises(ValueError, match="remat must be one of"):
    get_config("tiny", remat="some")
