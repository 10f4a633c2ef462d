"""The IMP model: modality embedders -> one shared encoder -> heads.

    model = Model(get_config("MoE-B"), mesh=mesh)   # mesh=None on one device
    params = init_params(get_config("MoE-B"), jax.random.key(0))
    out = model.apply({"params": params},
                      {"video": video, "text": ids, "text_mask": mask},
                      train=True, drop_token={"video": 0.75},
                      heads={"video": "kinetics700"},
                      rngs={"droptoken": rng})

`inputs` maps modality names (embed.MODALITIES: image, video, spectrogram,
waveform, text; plus "text_mask") to batches; the input conventions are in
embed.py. Each modality present runs through the shared encoder on its own
(its own sequence length), so one step can compute a contrastive loss between
two modalities of the same examples. The output is

  out[modality] = {"pooled": [b, width] float32 (masked mean of the tokens),
                   "embedding": [b, embed_dim] float32 (projection head),
                   "logits": {head: [b, classes]} for the heads asked for}
  out["aux_loss"]     the weighted MoE losses to add to the task loss:
                      load_balance_weight * load_balance + z_loss_weight * z.
  out["moe"]          {"load_balance_loss", "z_loss"}: summed over MoE layers,
                      averaged over the modalities of the call; "experts":
                      {modality: {"layer_i": expert_stats}} (moe.expert_stats, with
                      that layer's load_balance_loss and z_loss).
  out["temperature"]  {pair: contrastive temperature}, pairs in heads.PAIRS.

Initialize with `init_params`, which runs every embedder and head once so the
parameter tree (and the optimizer state) is the same whatever the task.
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from impax.model import embed
from impax.model.config import Config
from impax.model.encoder import Encoder, scan_params
from impax.model.heads import (FAMILIES, ClassificationHead, ProjectionHead,
                               Temperatures)


class Model(nn.Module):
  config: Config
  mesh: jax.sharding.Mesh | None = None

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool = False,
               drop_token: Mapping[str, float] | None = None,
               heads: Mapping[str, str | tuple[str, ...]] | None = None):
    cfg = self.config
    unknown = set(inputs) - set(embed.MODALITIES) - {"text_mask"}
    if unknown:
      raise ValueError(f"Unknown model inputs {sorted(unknown)}.")
    if not set(inputs) & set(embed.MODALITIES):
      raise ValueError("inputs hold no modality.")
    drop_token, heads = drop_token or {}, heads or {}

    vision = embed.VisionEmbed(cfg, name="vision_embed")
    embedders = {
        "image": lambda x: vision(x, is_image=True),
        "video": lambda x: vision(x, is_image=False),
        "spectrogram": embed.SpectrogramEmbed(cfg, name="spectrogram_embed"),
        "waveform": embed.WaveformEmbed(cfg, name="waveform_embed"),
        "text": embed.TextEmbed(cfg, name="text_embed"),
    }
    encoder = Encoder(cfg, self.mesh, name="encoder")
    projections = {f: ProjectionHead(cfg, name=f"proj_{f}") for f in FAMILIES}
    classifiers = {n: ClassificationHead(c, name=f"head_{n}")
                   for n, c in cfg.classifiers}

    out, experts, lb_losses, z_losses = {}, {}, [], []
    for modality in (m for m in embed.MODALITIES if m in inputs):
      x = inputs[modality]
      tokens, _ = embedders[modality](x)
      if modality == "text":
        mask = inputs.get("text_mask", x != 0).astype(jnp.bool_)
      else:
        mask = jnp.ones(tokens.shape[:2], jnp.bool_)
      rate = drop_token.get(modality, 0.0)
      if train and rate > 0:
        tokens, mask = embed.drop_tokens(self.make_rng("droptoken"), tokens,
                                         mask, rate)
      if self.is_initializing() and out:
        # The encoder has its parameters from the first modality; running it
        # again would only make init slower to compile.
        pooled, moe_aux = tokens.mean(axis=1).astype(jnp.float32), {}
      else:
        _, pooled, moe_aux = encoder(tokens, mask, modality == "text")

      names = heads.get(modality, ())
      names = (names,) if isinstance(names, str) else tuple(names)
      if self.is_initializing() and not out:
        names = tuple(classifiers)  # Create every head's parameters.
      out[modality] = {
          "pooled": pooled,
          "embedding": projections[embed.FAMILY[modality]](pooled),
          "logits": {n: classifiers[n](pooled) for n in names},
      }
      # Per layer, for the trainer's diagnostics: what each expert took, and the router's
      # losses (their gradient flows through aux_loss, not through these).
      experts[modality] = {layer: jax.lax.stop_gradient(a) for layer, a in moe_aux.items()}
      lb_losses.append(sum(a["load_balance_loss"] for a in moe_aux.values()))
      z_losses.append(sum(a["z_loss"] for a in moe_aux.values()))

    if self.is_initializing():
      for head in projections.values():  # Families absent from inputs.
        head(jnp.zeros((1, cfg.width)))
    lb = jnp.mean(jnp.asarray(lb_losses, jnp.float32))
    z = jnp.mean(jnp.asarray(z_losses, jnp.float32))
    out["aux_loss"] = cfg.load_balance_weight * lb + cfg.z_loss_weight * z
    out["moe"] = {"load_balance_loss": lb, "z_loss": z, "experts": experts}
    out["temperature"] = Temperatures(cfg, name="temperature")()
    return out


def dummy_inputs(config: Config, batch: int = 1) -> dict[str, jax.Array]:
  """The smallest valid input of every modality (one patch / token each)."""
  t, p, q = config.tubelet
  return {
      "image": jnp.zeros((batch, p, q, 3), jnp.float32),
      "video": jnp.zeros((batch, t, p, q, 3), jnp.float32),
      "spectrogram": jnp.zeros((batch, *config.spectrogram_patch), jnp.float32),
      "waveform": jnp.zeros((batch, config.waveform_patch), jnp.float32),
      "text": jnp.ones((batch, 2), jnp.int32),
  }


def init_params(config: Config, rng: jax.Array):
  """All parameters of the model (every embedder and head), float32.

  Parameters do not depend on the mesh; to create them sharded, jit this with
  `out_shardings=sharding.param_shardings(...)`. Nor on `scan_layers`: a scanned model's are
  the unrolled model's, stacked (encoder.scan_params), so that the same seed starts the same
  model however it compiles.
  """
  if config.scan_layers:
    unrolled = dataclasses.replace(config, scan_layers=False)
    return jax.jit(lambda rng: scan_params(init_params(unrolled, rng), config))(rng)
  init = lambda rng: Model(config).init({"params": rng}, dummy_inputs(config))
  return jax.jit(init)(rng)["params"]
