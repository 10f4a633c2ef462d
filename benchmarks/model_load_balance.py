"""Expert load after a few hundred training steps on varied inputs (CPU).

    .venv/bin/python benchmarks/model_load_balance.py --steps 300

Trains the tiny MoE preset (4 experts in layers 2 and 3) with alternating
tasks, one per step as in IMP's AGD: image classification, video-text
contrastive, spectrogram-text contrastive and waveform classification, on
synthetic data whose classes differ in frequency and orientation. Runs once
per router (expert choice; token choice top-1 and top-2, each with the
load-balancing and z losses at their config weights), then reports, per
modality and MoE layer on a held-out batch, the fraction of routed tokens each
expert took and the fraction of tokens no expert took. Prints JSON.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from impax.model import Model, get_config, init_params
from impax.train import objectives

NUM_CLASSES = 10


def synthetic_batch(rng: np.random.Generator, batch: int) -> tuple[dict, np.ndarray]:
  """Every modality for `batch` examples of random classes."""
  labels = rng.integers(0, NUM_CLASSES, batch)
  freq = 1.0 + labels[:, None, None]  # Spatial / temporal frequency per class.
  angle = labels[:, None, None] * np.pi / NUM_CLASSES
  yy, xx = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32),
                       indexing="ij")
  proj = np.cos(angle) * xx[None] + np.sin(angle) * yy[None]
  noise = lambda *s: 0.2 * rng.standard_normal(s)
  image = 0.5 + 0.5 * np.sin(2 * np.pi * freq * proj)
  image = np.repeat(image[..., None], 3, axis=-1) + noise(batch, 32, 32, 3)
  phase = np.arange(4)[None, :, None, None] * 0.3 * (1 + labels[:, None, None,
                                                                   None])
  video = 0.5 + 0.5 * np.sin(2 * np.pi * freq[:, None] * proj[:, None] + phase)
  video = np.repeat(video[..., None], 3, axis=-1) + noise(batch, 4, 32, 32, 3)
  mel = np.arange(32)[None, None, :]
  spectrogram = np.exp(-0.5 * ((mel - 3 * labels[:, None, None] - 2) / 2) ** 2)
  spectrogram = np.broadcast_to(spectrogram, (batch, 64, 32)) + noise(
      batch, 64, 32)
  t = np.arange(4096)[None] / 4096
  waveform = np.sin(2 * np.pi * 20 * (1 + labels[:, None]) * t) + noise(
      batch, 4096)
  # Captions: class-specific word ids, variable length, padded with 0.
  text = np.zeros((batch, 12), np.int32)
  for i, c in enumerate(labels):
    length = rng.integers(4, 13)
    text[i, :length] = 100 + 50 * c + rng.integers(0, 50, length)
  inputs = dict(image=image, video=video, spectrogram=spectrogram,
                waveform=waveform, text=text)
  inputs = {k: v.astype(np.int32 if k == "text" else np.float32)
            for k, v in inputs.items()}
  return inputs, labels


# Task = (modalities, loss kind, classification head); one task per step.
TASKS = [(("image",), "classify", "imagenet"),
         (("video", "text"), "contrastive", None),
         (("spectrogram", "text"), "contrastive", None),
         (("waveform",), "classify", "esc50")]


def train(config, steps: int, batch: int, seed: int = 0) -> dict:
  model = Model(config)
  params = init_params(config, jax.random.key(seed))
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-7,
                               weight_decay=1e-4))
  opt_state = tx.init(params)

  def make_step(task):
    modalities, kind, head = task

    @jax.jit
    def step(params, opt_state, inputs, labels):
      def loss_fn(params):
        out = model.apply({"params": params}, inputs,
                          heads={modalities[0]: head} if head else None)
        if kind == "classify":
          loss = optax.softmax_cross_entropy_with_integer_labels(
              out[modalities[0]]["logits"][head], labels).mean()
        else:
          a, b = modalities
          loss, _ = objectives.infonce(
              out[a]["embedding"], out[b]["embedding"],
              out["temperature"][f"{'vision' if a == 'video' else a}_{b}"],
              jnp.ones(labels.shape[0], bool))
        return loss + out["aux_loss"], loss
      (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    return step

  steps_fns = [make_step(t) for t in TASKS]
  rng = np.random.default_rng(seed)
  losses = {t[0]: [] for t in TASKS}
  start = time.perf_counter()
  for i in range(steps):
    task = TASKS[i % len(TASKS)]
    inputs, labels = synthetic_batch(rng, batch)
    inputs = {m: inputs[m] for m in task[0]}
    params, opt_state, loss = steps_fns[i % len(TASKS)](params, opt_state,
                                                       inputs, labels)
    losses[task[0]].append(float(loss))
  train_s = time.perf_counter() - start

  # Held-out batch, every modality, no DropToken.
  inputs, _ = synthetic_batch(np.random.default_rng(seed + 1), 4 * batch)
  out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, inputs)
  load = {}
  for modality, layers in out["moe"]["experts"].items():
    load[modality] = {}
    for layer, s in layers.items():
      per_expert = np.asarray(s["tokens_per_expert"], np.float64)
      load[modality][layer] = dict(
          fraction_per_expert=np.round(per_expert / per_expert.sum(), 3).tolist(),
          dropped_fraction=round(float(s["dropped_tokens"]) / float(s["tokens"]), 3),
          tokens=int(s["tokens"]))
  first = {"+".join(k): round(float(np.mean(v[:5])), 3) for k, v in losses.items()}
  last = {"+".join(k): round(float(np.mean(v[-5:])), 3) for k, v in losses.items()}
  return dict(train_seconds=round(train_s, 1), task_loss_first5=first,
              task_loss_last5=last, eval_load=load)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=16)
  args = parser.parse_args()
  results = {}
  for router, top_k in (("expert_choice", 1), ("token_choice", 1),
                        ("token_choice", 2)):
    config = get_config("tiny", router=router, top_k=top_k)
    name = router if router == "expert_choice" else f"{router}_top{top_k}"
    results[name] = train(config, args.steps, args.batch)
  print(json.dumps(dict(preset="tiny", steps=args.steps, batch=args.batch,
                        num_experts=4, results=results), indent=2))


if __name__ == "__main__":
  main()
