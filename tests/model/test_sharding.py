"""One device against eight: the sharded MoE computes the same thing.

The eight devices are simulated CPU devices, which must be configured before
jax starts, so the comparison runs in a fresh Python process.
"""

import json
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.sharding import PartitionSpec as P

from impax.model import get_config, init_params, sharding

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import dataclasses, json
    import jax, jax.numpy as jnp, numpy as np
    from impax.model import Model, get_config, init_params, scan_params, sharding, unscan_params

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    # 16 examples over 8 devices: 2 per device. With 32 video tokens per
    # example and groups of 32 tokens, routing groups are the same on one
    # device and on eight.
    inputs = {"video": rng.random((16, 4, 32, 32, 3), dtype=np.float32),
              "text": rng.integers(1, 1000, (16, 12)).astype(np.int32)}
    inputs["text"][:, 9:] = 0  # Padding.
    results = {}
    for router, top_k in (("expert_choice", 1), ("token_choice", 2), ("dense", 1),
                          ("scanned", 1)):
      config = (get_config("tiny", moe_layers=()) if router == "dense" else
                get_config("tiny", group_size=32, top_k=top_k,
                           router="expert_choice" if router == "scanned" else router))
      params = init_params(config, jax.random.key(0))

      def value_and_grad(model):
        def loss(params, inputs):
          out = model.apply({"params": params}, inputs)
          v, t = out["video"]["embedding"], out["text"]["embedding"]
          return jnp.mean((v - t) ** 2) + out["aux_loss"], out
        return jax.jit(jax.value_and_grad(loss, has_aux=True))

      (loss1, out1), grads1 = value_and_grad(Model(config))(params, inputs)
      mesh = sharding.make_mesh(config.num_experts)
      if router == "scanned":  # The unrolled model on one device against the scanned on eight.
        config = dataclasses.replace(config, scan_layers=True, remat="full")
        params = scan_params(params, config)
      step = value_and_grad(Model(config, mesh))
      sharded_params = jax.device_put(
          params, sharding.param_shardings(params, mesh))
      # Placed as the trainer places a host batch.
      batch_sharding = sharding.batch_sharding(mesh)
      sharded_inputs = {k: jax.make_array_from_process_local_data(batch_sharding, v)
                        for k, v in inputs.items()}
      (loss8, out8), grads8 = step(sharded_params, sharded_inputs)
      hlo = step.lower(sharded_params, sharded_inputs).compile().as_text()
      if router == "scanned":
        grads8, wi = unscan_params(grads8, config), grads8["encoder"]["blocks_2_3"]["moe"]["wi"]
        results[router] = dict(expert_grad_spec=list(wi.sharding.spec),
                               expert_grad_shard=list(wi.addressable_shards[0].data.shape))

      diff = lambda a, b: max(float(jnp.max(jnp.abs(x - y))) for x, y in
                              zip(jax.tree.leaves(a), jax.tree.leaves(b)))
      scale = lambda a: max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))
      results.setdefault(router, {}).update(
          mesh=dict(mesh.shape),
          loss=[float(loss1), float(loss8)],
          aux_loss=[float(out1["aux_loss"]), float(out8["aux_loss"])],
          output_diff=diff(out1["video"], out8["video"]) + diff(
              out1["text"], out8["text"]),
          output_scale=scale(out1["video"]),
          grad_diff=diff(grads1, grads8), grad_scale=scale(grads1),
          # the counts exactly; each layer's router losses (floats) to float tolerance
          stats_equal=bool(all(
              np.array_equal(a, b) if np.issubdtype(np.asarray(a).dtype, np.integer)
              else np.allclose(a, b, rtol=1e-5, atol=1e-8)
              for a, b in zip(jax.tree.leaves(out1["moe"]["experts"]),
                              jax.tree.leaves(out8["moe"]["experts"])))),
          all_to_all=hlo.count(" all-to-all("),
          all_gather=hlo.count(" all-gather("))
      if router in ("dense", "scanned"):
        continue
      wi = grads8["encoder"]["block_3"]["moe"]["wi"]
      results[router].update(expert_grad_spec=list(wi.sharding.spec),
                             expert_grad_shard=list(wi.addressable_shards[0].data.shape))
      try:  # A batch the mesh cannot split is refused.
        step(sharded_params, {"video": inputs["video"][:4]})
        results[router]["odd_batch_refused"] = False
      except ValueError:
        results[router]["odd_batch_refused"] = True
      # Routing groups of 4 captions (12 tokens, group_size 64): 4 groups of the 16, which
      # 8 devices cannot each hold whole. Once grouped per device (2 captions a group), and
      # so computed differently on one device and on eight; now refused, with the value.
      wide = dataclasses.replace(config, group_size=64)
      try:
        value_and_grad(Model(wide, mesh))(sharded_params, sharded_inputs)
        results[router]["unshardable_groups"] = "not refused"
      except ValueError as e:
        results[router]["unshardable_groups"] = str(e)
    print("RESULTS", json.dumps(results))
""")


@pytest.fixture(scope="module")
def results():
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS")][0]
  return json.loads(line.split(" ", 1)[1])


@pytest.mark.parametrize("router", ["expert_choice", "token_choice", "dense", "scanned"])
def test_one_and_eight_devices_agree(results, router):
  r = results[router]
  assert r["mesh"] == {"data": 2, "expert": 4}
  assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-5)
  assert r["aux_loss"][0] == pytest.approx(r["aux_loss"][1], rel=1e-5,
                                           abs=1e-8)
  assert r["output_diff"] <= 1e-5 * max(1.0, r["output_scale"])
  assert r["grad_diff"] <= 1e-5 * max(1.0, r["grad_scale"])
  assert r["stats_equal"]  # Same routing: same tokens per expert, drops.


@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_groups_that_eight_devices_cannot_hold_whole_are_refused(results, router):
  assert results[router]["unshardable_groups"].startswith(
      "routing groups of 4 examples of 12 tokens (group_size 64) make 4 groups of a batch of "
      "16, which the mesh's 8 batch shards cannot each hold whole: set the model's group_size "
      "to 24")


@pytest.mark.parametrize("router", ["expert_choice", "token_choice"])
def test_experts_are_split_and_tokens_move_by_all_to_all(results, router):
  r = results[router]
  assert r["expert_grad_spec"][0] == "expert"
  assert r["expert_grad_shard"][0] == 4 // 4  # 4 experts over 4 devices.
  # Two MoE layers x two modalities x (dispatch, return) x (fwd, bwd).
  assert r["all_to_all"] == 16
  assert r["all_gather"] == 0
  assert r["odd_batch_refused"]


def test_scanned_expert_weights_are_split_on_their_expert_axis(results):
  # Stacked [layers, experts, ...]: the layer axis whole, each device 1 of the 4 experts.
  assert results["scanned"]["expert_grad_spec"][:2] == [None, "expert"]
  assert results["scanned"]["expert_grad_shard"][:2] == [2, 1]


def test_partition_rules_split_only_expert_weights():
  params = jax.eval_shape(lambda: init_params(get_config("MoE-B"),
                                              jax.random.key(0)))
  specs = sharding.param_specs(params)
  flat = jax.tree_util.tree_flatten_with_path(specs)[0]
  split = {jax.tree_util.keystr(p) for p, s in flat if s != P()}
  assert split == {f"['encoder']['block_{i}']['moe']['{w}']"
                   for i in range(6, 12) for w in ("wi", "wo")}
  for path, spec in flat:
    if spec != P():
      assert spec == P("expert", None, None)
