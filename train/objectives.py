"""Losses of the tasks: symmetric InfoNCE and classification, over batches with invalid slots.

Every loss takes `valid` [batch] (the loader marks undecodable records and
evaluation padding False) and ignores those examples entirely: they are
neither anchors nor negatives.
"""

import jax
import jax.numpy as jnp

_NEG = -1e9


def _normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def infonce(a: jax.Array, b: jax.Array, temperature: jax.Array, valid: jax.Array
            ) -> tuple[jax.Array, dict]:
  """Symmetric InfoNCE between L2-normalized a [n, d] and b [n, d]; a[i] pairs with b[i].

  loss = (CE(a -> b) + CE(b -> a)) / 2 over valid rows, with logits
  a_i . b_j / temperature and invalid rows and columns masked out.
  """
  logits = _normalize(a) @ _normalize(b).T / temperature
  logits = jnp.where(valid[:, None] & valid[None, :], logits, _NEG)
  labels = jnp.arange(a.shape[0])
  weight = valid.astype(jnp.float32)
  count = jnp.maximum(weight.sum(), 1.0)

  def ce(lg):
    return -(jax.nn.log_softmax(lg, axis=-1)[labels, labels] * weight).sum() / count

  loss = 0.5 * (ce(logits) + ce(logits.T))
  hits = (jnp.argmax(logits, axis=-1) == labels) & valid
  return loss, {"accuracy": hits.sum() / count}


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array
                          ) -> tuple[jax.Array, dict]:
  """Single-label: logits [n, classes], labels int [n]."""
  weight = valid.astype(jnp.float32)
  count = jnp.maximum(weight.sum(), 1.0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  hits = (jnp.argmax(logits, axis=-1) == labels) & valid
  return (nll * weight).sum() / count, {"accuracy": hits.sum() / count}


def sigmoid_cross_entropy(logits: jax.Array, targets: jax.Array, valid: jax.Array
                          ) -> tuple[jax.Array, dict]:
  """Multi-label: logits and multi-hot targets [n, classes]; mean over classes."""
  weight = valid.astype(jnp.float32)
  count = jnp.maximum(weight.sum(), 1.0)
  logits = logits.astype(jnp.float32)
  per_class = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  top = jnp.take_along_axis(targets, jnp.argmax(logits, axis=-1)[:, None], axis=-1)[:, 0]
  return ((per_class.mean(-1) * weight).sum() / count,
          {"accuracy": (top * weight).sum() / count})  # top-1 is one of the labels
