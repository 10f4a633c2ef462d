"""What training, planning, evaluation and the train flow start from, built and checked once.

    s = setup.setup(config)                   # the trainer: everything, loaders opened
    s = setup.setup(config, mesh=False)       # `impax plan`: batches as on any hardware
    s = setup.setup(config, loaders=False)    # `impax eval`, the train flow's checks
    s.model_cfg, s.mesh, s.model, s.batch_multiple, s.loaders["video_text"]

Each part is refused before anything trains, with a ConfigError that names the
task, bucket or field and what to change: the config's own fields (config.check),
the datasets against the tasks (inputs.check_datasets: labels, one tokenizer no
larger than the model's vocabulary), every bucket against the model's patches,
the batch multiple against the mesh's batch shards and the processes, and each
task's training loader against its split (inputs.open_loaders), with the
validation split periodic evaluation reads.
"""

import dataclasses

from jax.sharding import Mesh

from impax.datasets import loader as loader_lib
from impax.model import Config as ModelConfig, Model, sharding
from impax.train import inputs, step
from impax.train.config import ConfigError, TrainConfig, check


@dataclasses.dataclass(frozen=True)
class Setup:
  config: TrainConfig
  num_labels: dict[str, int]  # each task's number of labels (its dataset's)
  model_cfg: ModelConfig  # the config's preset, with a head per classification task
  mesh: Mesh | None  # None: one device, or `setup(mesh=False)`
  model: Model
  batch_multiple: int  # of every global batch: the config's, checked against the mesh
  loaders: dict[str, loader_lib.Loader] | None  # each task's training loader; None: not opened

  @property
  def patches(self) -> loader_lib.Patches:
    return inputs.patches_of(self.model_cfg)


def setup(config: TrainConfig, *, mesh: bool = True, loaders: bool = True) -> Setup:
  """`config` checked against its datasets and this machine, with its model, mesh and loaders.

  `mesh=False`: no mesh, and the config's batch_multiple unchecked against one (a plan holds
  on any hardware). `loaders=False`: the tasks' training loaders are not opened (evaluation
  opens its own; the flow's checks read no split)."""
  # -- the config, and the datasets against its tasks -----------------------------------
  check(config)
  num_labels = inputs.check_datasets(config)

  # -- the model: its preset and heads, and the buckets against its patches ------------
  model_cfg = step.model_config(config, num_labels)
  for task in config.tasks:
    inputs.check_buckets(task, model_cfg)

  # -- the mesh, and the batch multiple it must divide --------------------------------
  the_mesh = step.make_mesh(model_cfg) if mesh else None
  multiple = (inputs.batch_multiple(config, sharding.batch_shards(the_mesh)) if mesh
              else config.batch_multiple)
  model = Model(model_cfg, mesh=the_mesh)

  # -- the input pipeline: each task's training loader -------------------------------
  opened = None
  if loaders:
    opened = inputs.open_loaders(config, model_cfg, batch_multiple=multiple)
    _check_validation(config, opened)
  return Setup(config=config, num_labels=num_labels, model_cfg=model_cfg, mesh=the_mesh,
               model=model, batch_multiple=multiple, loaders=opened)


def _check_validation(config: TrainConfig, loaders: dict) -> None:
  """Periodic evaluation needs the validation split, and keep_best its task's: refused
  before the first step rather than at the first evaluation."""
  if not config.eval_every:
    return
  split = config.validation_split
  have = [n for n, data in loaders.items()
          if any(split in d.metadata.splits for d in data.datasets)]
  if not have:
    raise ConfigError(f"eval_every {config.eval_every} evaluates split {split!r}, which no "
                      f"task's dataset has: build it, or set validation_split")
  task = config.keep_best.partition("/")[0]
  if config.keep_best and task not in have:
    raise ConfigError(f"keep_best {config.keep_best!r}: the dataset of task {task!r} "
                      f"({', '.join(loaders[task].roots)}) has no split {split!r} to choose on")
