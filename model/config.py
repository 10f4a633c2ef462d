"""Model presets as plain data.

A preset is a `Config`: one frozen dataclass holding every knob of the encoder.
`get_config("MoE-B")` returns a preset; keyword overrides change single fields,
e.g. `get_config("tiny", router="token_choice", top_k=2)`. Configs are frozen
(hashable) so a Flax module can hold one as an attribute and `jax.jit` can treat
it as static.

Sizes follow IMP (../shared/IMP.md): width / MLP / depth / heads are
S 384/1536/12/6, B 768/3072/12/12, L 1024/4096/24/16; no biases; MoE models
have QK-LayerNorm, 16 experts (4 for S) in the last 6 layers, expert-choice
routing with capacity factor 1.0 over routing groups of 2048 tokens.
"""

import dataclasses

# What a block keeps for the backward pass: "none" keeps every activation;
# "full" only the block's input (the whole block is recomputed); "save_dots"
# every matmul's output; "save_dots_no_batch" the outputs of matmuls without
# batch dimensions (projections, dense MLPs), recomputing attention and experts.
REMAT = ("none", "full", "save_dots", "save_dots_no_batch")


@dataclasses.dataclass(frozen=True)
class Config:
  name: str = "custom"

  # Shared Transformer encoder.
  width: int = 768
  mlp_dim: int = 3072
  depth: int = 12
  num_heads: int = 12
  qk_layernorm: bool = False
  use_bias: bool = False  # IMP has no biases (Dense and LayerNorm).
  # "float32" or "bfloat16": the compute dtype. Parameters, the router, softmax
  # statistics and LayerNorm statistics stay in float32 either way.
  dtype: str = "float32"
  # How the encoder compiles, never what it computes (encoder.py): scan_layers
  # runs each run of identical blocks under nn.scan (one block compiled per
  # run, parameters stacked on a leading layer axis); remat names what a block
  # keeps from its forward pass for the backward one (REMAT).
  scan_layers: bool = False
  remat: str = "none"
  attention_impl: str | None = None  # jax.nn.dot_product_attention: None/"xla"/"cudnn".

  # Mixture-of-Experts feed-forward layers.
  moe_layers: tuple[int, ...] = ()  # Indices of the blocks whose MLP is an MoE.
  num_experts: int = 0
  router: str = "expert_choice"  # or "token_choice".
  top_k: int = 1  # Experts per token; token-choice only.
  capacity_factor: float = 1.0
  group_size: int = 2048  # Tokens routed together (IMP: 2048).
  load_balance_weight: float = 0.01  # Weight of the Switch load-balancing loss.
  z_loss_weight: float = 1e-3  # Weight of the ST-MoE router z-loss.

  # Modality embedders. Positional tables are looked up from normalized
  # coordinates, so the bucket counts set their resolution, not a max shape.
  tubelet: tuple[int, int, int] = (4, 16, 16)  # time x height x width.
  # Convolutional stem: output channels of 3x3 stride-2 convolutions run on
  # every frame before the tubelet embedding (Xiao et al. 2021, "Early
  # convolutions help transformers see better"). Each halves the frame, so the
  # tubelet's height and width must be divisible by 2 ** len(vision_stem); the
  # token count stays that of the plain tubelet. () is IMP's linear patching.
  vision_stem: tuple[int, ...] = ()
  vision_pos_buckets: tuple[int, int, int] = (8, 16, 16)
  spectrogram_patch: tuple[int, int] = (16, 16)  # time frames x mel bins.
  spectrogram_pos_buckets: tuple[int, int] = (32, 16)
  waveform_patch: int = 256  # samples.
  waveform_pos_buckets: int = 512
  vocab_size: int = 32_100  # T5 English SentencePiece.
  text_pos_buckets: int = 64  # Absolute positions up to this length.

  # Heads.
  embed_dim: int = 1024  # Shared contrastive space.
  temperature_init: float = 0.2
  # (name, num_classes) pairs; a tuple so the config stays hashable.
  classifiers: tuple[tuple[str, int], ...] = (
      ("imagenet", 1000), ("kinetics700", 700), ("esc50", 50))

  def __post_init__(self):
    # remat was a boolean: True recomputed whole blocks.
    if isinstance(self.remat, bool):
      object.__setattr__(self, "remat", "full" if self.remat else "none")

  @property
  def is_moe(self) -> bool:
    return bool(self.moe_layers)


def _moe(dense: dict, num_experts: int) -> dict:
  depth = dense["depth"]
  return dict(dense, qk_layernorm=True, num_experts=num_experts,
              moe_layers=tuple(range(depth - 6, depth)))


_S = dict(width=384, mlp_dim=1536, depth=12, num_heads=6)
_B = dict(width=768, mlp_dim=3072, depth=12, num_heads=12)
_L = dict(width=1024, mlp_dim=4096, depth=24, num_heads=16)

PRESETS = {
    # Small enough for a CPU training step in tens of milliseconds; an MoE so
    # tests exercise routing. Smaller patches keep token counts meaningful on
    # tiny test inputs (a 32x32 image is 16 tokens).
    "tiny": dict(
        width=64, mlp_dim=256, depth=4, num_heads=4, qk_layernorm=True,
        moe_layers=(2, 3), num_experts=4, group_size=64,
        tubelet=(2, 8, 8), vision_pos_buckets=(4, 8, 8),
        spectrogram_patch=(8, 8), spectrogram_pos_buckets=(16, 8),
        waveform_patch=64, waveform_pos_buckets=64, embed_dim=64,
        classifiers=(("imagenet", 1000), ("kinetics700", 700),
                     ("esc50", 50))),
    "S": _S,
    "B": _B,
    "L": _L,
    "MoE-S": _moe(_S, num_experts=4),
    "MoE-B": _moe(_B, num_experts=16),
    "MoE-L": _moe(_L, num_experts=16),
}


def get_config(name: str, **overrides) -> Config:
  """Returns preset `name` with `overrides` applied."""
  if name not in PRESETS:
    raise ValueError(f"Unknown preset {name!r}; choose from {list(PRESETS)}.")
  config = Config(name=name, **{**PRESETS[name], **overrides})
  validate(config)
  return config


def validate(config: Config) -> None:
  if config.width % config.num_heads:
    raise ValueError("width must be divisible by num_heads.")
  if config.moe_layers:
    if config.num_experts < 1:
      raise ValueError("moe_layers needs num_experts >= 1.")
    if not all(0 <= i < config.depth for i in config.moe_layers):
      raise ValueError(f"moe_layers {config.moe_layers} outside depth "
                       f"{config.depth}.")
  if config.router not in ("expert_choice", "token_choice"):
    raise ValueError(f"Unknown router {config.router!r}.")
  if config.router == "token_choice" and not 1 <= config.top_k <= max(
      1, config.num_experts):
    raise ValueError("top_k must be in [1, num_experts].")
  stride = 2 ** len(config.vision_stem)
  if config.tubelet[1] % stride or config.tubelet[2] % stride:
    raise ValueError(f"tubelet {config.tubelet}: height and width must be "
                     f"divisible by {stride} for a {len(config.vision_stem)}-"
                     f"layer vision_stem.")
  if config.remat not in REMAT:
    raise ValueError(f"remat must be one of {REMAT}, not {config.remat!r}.")
  if config.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be float32 or bfloat16, not {config.dtype}.")
