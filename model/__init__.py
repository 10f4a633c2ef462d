"""impax.model: the IMP encoder (one shared Transformer for image, video, audio
and text, with a sharded Mixture-of-Experts) and its presets.

    from impax.model import Model, get_config, init_params, sharding
    config = get_config("MoE-B")
    params = init_params(config, jax.random.key(0))
    out = Model(config, mesh=None).apply({"params": params}, {"image": x})

Modules: config (presets), embed (modality embedders, input conventions),
encoder (Transformer; scan_params / unscan_params move parameters between its
unrolled and scanned layouts), moe (routing, experts), heads, sharding (mesh
and partition rules), imp (the model), info (parameter and FLOP counts, CLI).

May import: nothing of impax outside impax.model (its input names are checked
against impax.datasets.modalities by a test).
"""

from impax.model import sharding
from impax.model.config import PRESETS, Config, get_config
from impax.model.encoder import scan_params, unscan_params
from impax.model.imp import Model, dummy_inputs, init_params

__all__ = ["Config", "Model", "PRESETS", "dummy_inputs", "get_config",
           "init_params", "scan_params", "sharding", "unscan_params"]
