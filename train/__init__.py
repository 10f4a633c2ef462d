"""impax.train: Alternating Gradient Descent from prepared shards, and its evaluation.

  config.py     TrainConfig (and the loader's Task): experiments as Python files in configs/
  inputs.py     the tasks' loaders, checked against their datasets; batches as model inputs
  step.py       model, mesh, optimizer, one task's loss, the compiled step
  schedule.py   which task each step takes
  trainer.py    the loop: compile, step, log, checkpoint, evaluate
  evaluate.py   zero-shot, retrieval and accuracy; takes what it needs, never the loop
  objectives.py, checkpoint.py, metrics.py

May import: impax.datasets, impax.model.
"""
