"""Embedders: patching, image-as-clip, positional lookup, DropToken, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from impax.datasets import modalities
from impax.model import Model, embed, get_config


def test_patchify_cuts_tubelets_in_raster_order():
  x = np.arange(1 * 4 * 6 * 8 * 3, dtype=np.float32).reshape(1, 4, 6, 8, 3)
  patches, grid = embed.patchify(jnp.asarray(x), (2, 3, 4))
  assert grid == (2, 2, 2)
  assert patches.shape == (1, 8, 2 * 3 * 4 * 3)
  # Token 5 is grid cell (t=1, h=0, w=1).
  np.testing.assert_array_equal(patches[0, 5],
                                x[0, 2:4, 0:3, 4:8].reshape(-1))


def test_patchify_drops_incomplete_patches_and_rejects_tiny_inputs():
  patches, grid = embed.patchify(jnp.zeros((2, 70, 1)), (16,))
  assert grid == (4,) and patches.shape == (2, 4, 16)
  with pytest.raises(ValueError, match="smaller than one patch"):
    embed.patchify(jnp.zeros((2, 8, 1)), (16,))


@pytest.mark.parametrize("stem", [(), (8, 16)])
def test_image_is_a_clip_of_identical_frames(stem):
  config = get_config("tiny", vision_stem=stem)
  rng = np.random.default_rng(0)
  # 37 x 52 is not a whole number of 8 x 8 patches: the remainder is dropped,
  # with or without the stem.
  image = rng.random((2, 37, 52, 3), dtype=np.float32)
  clip = np.repeat(image[:, None], config.tubelet[0], axis=1)
  module = embed.VisionEmbed(config)
  params = module.init(jax.random.key(0), clip, is_image=False)
  from_image, grid_i = module.apply(params, image, is_image=True)
  from_clip, grid_c = module.apply(params, clip, is_image=False)
  assert grid_i == grid_c == (1, 4, 6)
  assert from_image.shape == (2, 24, config.width)
  np.testing.assert_allclose(from_image, from_clip, rtol=1e-5, atol=1e-5)


def test_conv_stem_sees_pixels_across_patch_borders():
  # Without a stem a token is a function of its own patch only; the stem's
  # 3x3 convolutions let a token see its neighbours' edge pixels.
  x = np.zeros((1, 2, 16, 16, 3), np.float32)
  changed = x.copy()
  changed[0, :, 8, 8] = 1.0  # the corner pixel of the bottom-right patch
  for stem, moved in (((), [3]), ((4, 8), [0, 1, 2, 3])):
    module = embed.VisionEmbed(get_config("tiny", vision_stem=stem))
    params = module.init(jax.random.key(0), x, is_image=False)
    a, _ = module.apply(params, x, is_image=False)
    b, _ = module.apply(params, changed, is_image=False)
    differs = np.abs(np.asarray(a - b)).max(axis=-1)[0] > 1e-6
    assert list(np.flatnonzero(differs)) == moved, stem


def test_conv_stem_needs_patches_divisible_by_its_stride():
  with pytest.raises(ValueError, match="divisible by 8 for a 3-layer vision_stem"):
    get_config("tiny", vision_stem=(4, 8, 16), tubelet=(2, 4, 4))


def test_positions_are_looked_up_from_normalized_coordinates():
  module = embed.FactorizedPosEmbed((4, 8), ("time", "height"), 16)
  coords = embed.grid_coordinates((2, 4))
  params = module.init(jax.random.key(0), coords)["params"]
  out = module.apply({"params": params}, coords)
  # Cell (i, j) of a 2 x 4 grid sits at bucket (2i + 1, 2j + 1) of 4 x 8.
  expected = np.stack([params["pos_time"][2 * i + 1] + params["pos_height"][
      2 * j + 1] for i in range(2) for j in range(4)])
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # A grid with as many cells as buckets uses every bucket once, in order.
  ids = np.floor(embed.grid_coordinates((4, 8)) * np.array([4, 8])).astype(int)
  np.testing.assert_array_equal(ids[:, 0], np.repeat(np.arange(4), 8))
  np.testing.assert_array_equal(ids[:, 1], np.tile(np.arange(8), 4))


def test_different_frame_counts_and_resolutions_share_weights(tiny, tiny_params):
  model = Model(tiny)
  run = jax.jit(lambda x: model.apply({"params": tiny_params}, {"video": x}))
  for frames, size in ((8, 64), (16, 128)):
    out = run(jnp.ones((1, frames, size, size, 3)))
    assert out["video"]["pooled"].shape == (1, tiny.width)
    assert np.isfinite(out["video"]["embedding"]).all()


SHAPES = [
    dict(image=(32, 32, 3), video=(4, 32, 32, 3), spectrogram=(64, 32),
         waveform=(4096,), text=(12,)),
    dict(image=(48, 64, 3), video=(8, 64, 48, 3), spectrogram=(100, 40),
         waveform=(1000,), text=(100,)),
    # Sizes that do not divide into patches: trailing pixels are dropped.
    dict(image=(40, 36, 3), video=(6, 40, 44, 3), spectrogram=(17, 9),
         waveform=(130,), text=(1,)),
]


@pytest.mark.parametrize("shapes", SHAPES)
def test_every_modality_gives_the_right_output_shapes(tiny, tiny_params,
                                                      make_inputs, shapes):
  batch = 3
  inputs = make_inputs(batch=batch, **shapes)
  heads = {"image": "imagenet", "video": ("kinetics700", "imagenet"),
           "spectrogram": "esc50"}
  out = jax.eval_shape(lambda: Model(tiny).apply(
      {"params": tiny_params}, inputs, heads=heads))
  for modality in inputs:
    assert out[modality]["pooled"].shape == (batch, tiny.width)
    assert out[modality]["embedding"].shape == (batch, tiny.embed_dim)
    assert out[modality]["pooled"].dtype == jnp.float32
    experts = out["moe"]["experts"][modality]
    assert sorted(experts) == [f"layer_{i}" for i in tiny.moe_layers]
    assert experts["layer_2"]["tokens_per_expert"].shape == (tiny.num_experts,)
  assert out["image"]["logits"]["imagenet"].shape == (batch, 1000)
  assert out["video"]["logits"]["kinetics700"].shape == (batch, 700)
  assert out["spectrogram"]["logits"]["esc50"].shape == (batch, 50)
  assert out["text"]["logits"] == {}
  assert out["aux_loss"].shape == ()


def test_drop_tokens_keeps_a_random_ordered_subset_and_drops_padding_first():
  tokens = jnp.arange(2 * 8, dtype=jnp.float32).reshape(2, 8, 1)
  mask = jnp.array([[True] * 8, [True] * 5 + [False] * 3])
  kept, kept_mask = embed.drop_tokens(jax.random.key(0), tokens, mask, 0.5)
  assert kept.shape == (2, 4, 1)
  for row in range(2):
    values = np.asarray(kept[row, :, 0])
    assert np.all(np.diff(values) > 0)  # Original order.
    assert set(values) <= set(np.asarray(tokens[row, :, 0]))
  assert kept_mask[1].all()  # 5 real tokens, 4 kept: no padding survives.
  again, _ = embed.drop_tokens(jax.random.key(0), tokens, mask, 0.5)
  np.testing.assert_array_equal(kept, again)
  other = [embed.drop_tokens(jax.random.key(s), tokens, mask, 0.5)[0]
           for s in range(1, 6)]
  assert any(not np.array_equal(kept, o) for o in other)


def test_drop_token_applies_only_in_training(tiny, tiny_params, make_inputs):
  inputs = make_inputs(batch=2, image=None, spectrogram=None, waveform=None,
                       text=None)
  model = Model(tiny)
  apply = jax.jit(lambda train, rate: model.apply(
      {"params": tiny_params}, inputs, train=train,
      drop_token={"video": rate}, rngs={"droptoken": jax.random.key(1)}),
      static_argnums=(0, 1))
  plain = apply(False, 0.0)["video"]["pooled"]
  np.testing.assert_array_equal(apply(False, 0.75)["video"]["pooled"], plain)
  dropped = apply(True, 0.75)
  assert not np.allclose(dropped["video"]["pooled"], plain)
  # 32 video tokens per example, 8 kept.
  stats = dropped["moe"]["experts"]["video"]["layer_2"]
  assert int(stats["tokens"]) == 2 * 8


def test_text_padding_does_not_change_the_output(tiny_params):
  # Token choice with room for every token: a token's route depends only on
  # itself, so padding can change nothing but through a masking bug.
  config = get_config("tiny", router="token_choice", capacity_factor=4.0)
  run = jax.jit(lambda x: Model(config).apply({"params": tiny_params}, x))
  ids = np.random.default_rng(0).integers(1, 100, (2, 7)).astype(np.int32)
  padded = np.concatenate([ids, np.zeros((2, 5), np.int32)], axis=1)
  short = run({"text": ids})["text"]["pooled"]
  long = run({"text": padded})["text"]["pooled"]
  np.testing.assert_allclose(short, long, rtol=1e-5, atol=1e-5)
  # An explicit mask takes precedence over pad id 0.
  masked = run({"text": padded, "text_mask": np.ones_like(padded)})
  masked = masked["text"]["pooled"]
  assert not np.allclose(masked, long, atol=1e-4)


def test_the_model_reads_the_inputs_the_loader_makes():
  # impax.model imports nothing of impax, so it names its inputs itself: the same as
  # the vocabulary the loader and the trainer use.
  assert embed.MODALITIES == modalities.ENCODED
  assert set(embed.FAMILY) == set(modalities.ENCODED)
  assert set(modalities.INPUTS) - set(modalities.ENCODED) == {"label"}
