"""Device mesh and partition rules.

The mesh has two axes: 'data' and 'expert'. The batch is split over both
(IMP: batch on ('expert', 'data')); expert weights are split over 'expert' and
replicated over 'data'; every other parameter is replicated. There is no
'model' (tensor-parallel) axis: IMP-L in bfloat16 with float32 parameters and
Adam state fits on one accelerator, so splitting matrices would only add
communication. The rules below are data, so adding one is a new row.

Why shard_map for the experts, and plain sharding propagation everywhere else:
the dense layers are pure data parallelism, which XLA's sharding propagation
gets right from the input shardings alone. The expert exchange is different:
the intended communication is exactly one all-to-all there and one back, and
with sharding constraints alone the partitioner decides how to move a
[groups, experts, capacity, d] tensor from batch-sharded to expert-sharded, and
it may pick all-gathers (the reference code works around such "erroneous
all-gather ops" with one-hot matmul tricks). Inside `jax.shard_map` the
all-to-all is written by hand (moe.moe_groups), so what runs is what is read,
routing stays device-local, and autodiff derives the backward all-to-alls and
the gradient sums over 'data' for the replicated expert weights. Without a
mesh the same expert function runs directly, so one code path serves one
device and many.
"""

import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
EXPERT_AXIS = "expert"
BATCH_AXES = (DATA_AXIS, EXPERT_AXIS)

# (regex over the "/"-joined parameter path, PartitionSpec); first match wins.
PARAM_RULES = (
    (r".*/moe/(wi|wo)$", P(EXPERT_AXIS, None, None)),
    (r".*/moe/(bi|bo)$", P(EXPERT_AXIS, None)),
    (r".*", P()),
)
# A scanned run of blocks (encoder.py, scan_layers) stacks its layers' parameters
# on a leading axis, which is never split: its rule's spec gets a leading None.
STACKED = r"(.*/)?encoder/blocks_\d+_\d+/.*"


def make_mesh(num_experts: int, devices=None) -> Mesh:
  """A ('data', 'expert') mesh over `devices` (default: all).

  The expert axis is as large as it can be while dividing both the device
  count and the number of experts; the rest is data parallelism.
  """
  devices = list(jax.devices() if devices is None else devices)
  n_expert = int(np.gcd(len(devices), max(num_experts, 1)))
  grid = np.array(devices).reshape(len(devices) // n_expert, n_expert)
  # Auto axes: sharding propagation decides layouts outside the shard_map.
  return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_shards(mesh: Mesh | None) -> int:
  """How many pieces the batch is split into."""
  if mesh is None:
    return 1
  return mesh.shape[DATA_AXIS] * mesh.shape[EXPERT_AXIS]


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_specs(params, rules=PARAM_RULES):
  """PartitionSpecs for a parameter tree (arrays or ShapeDtypeStructs)."""
  def spec(path, _):
    name = _path_str(path)
    for pattern, s in rules:
      if re.fullmatch(pattern, name):
        return P(None, *s) if s and re.fullmatch(STACKED, name) else s
    raise ValueError(f"No partition rule matches {name}.")
  return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(params, mesh: Mesh, rules=PARAM_RULES):
  return jax.tree.map(lambda s: NamedSharding(mesh, s),
                      param_specs(params, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(BATCH_AXES))
