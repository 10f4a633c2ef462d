"""Orbax checkpoints of a run: parameters and optimizer state, step and seed, loader states.

One checkpoint per saved step under WORKDIR/checkpoints/<step>/, the last N
kept. The state goes through Orbax's StandardSave (sharded arrays restore onto
the shardings of the target), the loaders' iterator states and the run's
step and seed through JsonSave. The random state needs no saving of its own:
each step's key is fold_in(key(seed), step). A checkpoint holding a NaN or an
inf is never restored (the trainer never saves one: its step skips such updates).
"""

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


class NonFiniteCheckpoint(ValueError):
  """A checkpoint holding NaN or inf: restoring it would continue a diverged run."""


class Checkpoints:
  def __init__(self, directory: str, keep: int, create: bool = True):
    """`create` False: reading only; a missing directory holds no checkpoint."""
    self.manager = ocp.CheckpointManager(  # Orbax refuses relative paths
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, loader_states: dict, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loaders=ocp.args.JsonSave(loader_states),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, target, layout=None):
    """(state, loader states, meta) of the latest checkpoint, or None; `target` gives
    the structure, shapes and shardings. `layout`, (to_saved, from_saved): another
    structure a checkpoint may hold the same state in (the encoder's layers scanned or
    not): a checkpoint that is not in the target's is restored in `to_saved(target)`'s
    and converted with `from_saved`."""
    step = self.manager.latest_step()
    if step is None:
      return None
    try:
      restored = self._restore(step, target)
    except ValueError as e:  # Orbax: "... tree structures do not match: ..."
      if layout is None or "do not match" not in str(e):
        raise
      to_saved, from_saved = layout
      saved = self._restore(step, jax.eval_shape(to_saved, target))
      shardings = jax.tree.map(lambda x: x.sharding, target)
      restored = {"state": jax.device_put(from_saved(saved["state"]), shardings),
                  "loaders": saved["loaders"], "meta": saved["meta"]}
    if not bool(jax.jit(all_finite)(restored["state"])):
      where = os.path.join(str(self.manager.directory), str(step))
      raise NonFiniteCheckpoint(
          f"the checkpoint of step {step} ({where}) holds non-finite parameters or optimizer "
          f"state (NaN or inf): it is not restored. Delete {where} to resume from the "
          "checkpoint before it, or train in a new workdir")
    return restored["state"], restored["loaders"], restored["meta"]

  def _restore(self, step: int, target) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), loaders=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def all_finite(tree) -> jax.Array:
  """Whether every float of `tree` is finite (no NaN, no inf), as a bool array."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
