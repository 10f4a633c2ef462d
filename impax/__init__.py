"""impax: prepare multimodal training data with Apache Beam and train IMP models on it.

The surface to script against, each name loaded when first touched (`import impax`
costs nothing; `impax.Loader` loads the loader alone):

    import impax

    impax.build("jsonl", "corpus/videos-train.jsonl", "data/videos", split="train")
    impax.verify("data/videos", deep=True)              # every shard against metadata.json
    impax.dedup(["data/videos"], against=["data/eval"])  # duplicates and leaks
    impax.card("data/videos")                           # data/videos/card.html

    task = impax.Task("video_text", "data/videos", "contrastive", ("video", "text"),
                      buckets=(impax.Bucket(video=(8, 64, 64), batch_size=64),))
    batches = iter(impax.Loader(task, seed=0))         # what step i trains on, resumable

    config = impax.TrainConfig(tasks=(task,), model="tiny", steps=1000)
    # or a config file: impax.load_config("train/configs/demo.py:data", ["steps=500"])
    summary = impax.train(config, "run")
    results = impax.evaluate(config, "run")

Each name's docstring shows its call. The namespace maps onto the project's folders:
`impax.pipelines` (pipelines/) writes shards, `impax.datasets` (datasets/) is the
format and its reading side, `impax.tools` (tools/) the dataset tools, `impax.model`
(model/) the encoder, `impax.train` (train/) the trainer and `impax.flows` (flows/)
the Prefect flows that orchestrate them. This folder holds the `impax` command
(cli.py, which may import anything) and the demo corpus (demo.py: anything but the
flows and the CLI). tests/test_layering.py keeps the imports to these rules; deep
imports (`from impax.datasets.loader import Bucket`) keep working.
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute). `train` is the package impax.train itself, which is
# callable (train/__init__.py): a package and a function cannot share the name otherwise.
_PUBLIC = {
    "build": ("impax.pipelines.build", "build"),
    "Loader": ("impax.datasets.loader", "Loader"),
    "Bucket": ("impax.datasets.loader", "Bucket"),
    "Task": ("impax.train.config", "Task"),
    "TrainConfig": ("impax.train.config", "TrainConfig"),
    "load_config": ("impax.train.config", "load"),
    "train": ("impax.train", None),
    "evaluate": ("impax.train.evaluate", "evaluate_checkpoint"),
    "verify": ("impax.tools.verify", "verify"),
    "dedup": ("impax.tools.dedup", "dedup"),
    "card": ("impax.tools.card", "write_card"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
  try:
    module, attribute = _PUBLIC[name]
  except KeyError:
    raise AttributeError(f"module 'impax' has no attribute {name!r}") from None
  value = importlib.import_module(module)
  if attribute:
    value = getattr(value, attribute)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_PUBLIC})
