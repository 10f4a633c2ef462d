"""impax.train: Alternating Gradient Descent from prepared shards, and its evaluation.

The package is also the function that trains (`impax.train`):

    import impax
    config = impax.load_config("train/configs/demo.py:demo-output/data", ["steps=500"])
    summary = impax.train(config, "demo-output/run")   # = impax.train.trainer.train

  config.py     TrainConfig and Task (the loader's, with its schedule and loss weight):
                experiments as Python files in configs/
  setup.py      what training, planning and evaluation start from, checked: the config
                against its datasets, the model, the mesh, the loaders
  inputs.py     the tasks' loaders, checked against their datasets; batches as model inputs
  step.py       model, mesh, optimizer, one task's loss, the compiled step
  schedule.py   which task each step takes
  trainer.py    the loop: compile, step, log, checkpoint, evaluate
  evaluate.py   zero-shot, retrieval and accuracy; takes what it needs, never the loop
  objectives.py, checkpoint.py, metrics.py

May import: impax.datasets, impax.model.
"""

import sys
import types


class _Callable(types.ModuleType):
  """impax.train the package, callable as impax.train.trainer.train: the public name
  `impax.train` is both (a module attribute cannot be a package and a function)."""

  def __call__(self, config, workdir: str, **kwargs):
    from impax.train import trainer  # JAX and the model: loaded when training starts
    return trainer.train(config, workdir, **kwargs)


sys.modules[__name__].__class__ = _Callable
