"""end_to_end: a corpus to an evaluated model, as `impax demo` does, with a final report.

    python -m impax.flows.demo demo-output     # make demo: this flow on the demo corpus

1. corpora: the demo corpus generated under ROOT/corpus (digits in videos, images and
   sounds; impax/demo.py), or your corpora, each with its splits and options.
2. build_dataset for each (cached: an unchanged corpus is not built again).
3. train (and evaluate) with the config: by default the demo's (train/configs/demo.py)
   on ROOT/data; the run goes to ROOT/run.
4. A report artifact: the datasets, the training, the evaluation and where it all is.
"""

import os
from typing import Annotated

import pydantic
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from impax import demo as demo_lib
from impax.flows import artifact_key
from impax.flows.build import BuildOptions, Split, build_dataset
from impax.flows.train import train


class DemoCorpus(pydantic.BaseModel):
  """Sizes of the generated demo corpus (all splits together); `impax demo`'s by default."""
  model_config = pydantic.ConfigDict(extra="forbid")
  videos: int = pydantic.Field(demo_lib.SIZES["videos"], ge=10)
  images: int = pydantic.Field(demo_lib.SIZES["images"], ge=10)
  audio: int = pydantic.Field(demo_lib.SIZES["audio"], ge=10)
  seed: int = 0


class Corpus(pydantic.BaseModel):
  """One of your corpora, built as build_dataset builds it."""
  model_config = pydantic.ConfigDict(extra="forbid")
  spec: str = pydantic.Field("jsonl", description="a registered spec or a spec file")
  output: str = pydantic.Field(min_length=1, description="the dataset folder")
  splits: list[Split] = pydantic.Field(min_length=1, description="in build order")
  options: BuildOptions | None = None
  config_file: str | None = None
  overwrite: bool = False


@task(name="generate_demo_corpus", task_run_name="generate_demo_corpus", cache_policy=NO_CACHE)
def generate_demo_corpus(root: str, demo: DemoCorpus) -> list[Corpus]:
  """Writes the demo corpus under root/corpus; returns its datasets to build under root/data."""
  corpus = os.path.join(root, "corpus")
  manifests = demo_lib.write_corpus(corpus, videos=demo.videos, images=demo.images,
                                    audio=demo.audio, seed=demo.seed)
  splits = {}
  for key, manifest in manifests.items():  # train before test: train fixes the vocabularies
    modality, split = key.rsplit("-", 1)
    splits.setdefault(modality, []).append(Split(name=split, input=manifest))
  return [Corpus(spec="jsonl", output=os.path.join(root, "data", modality), splits=s,
                 options=BuildOptions(**demo_lib.settings(corpus)))
          for modality, s in splits.items()]


@flow(name="end_to_end", flow_run_name="end to end in {root}")
def end_to_end(
    root: str = "demo-output",
    corpora: list[Corpus] | None = None,
    demo: DemoCorpus | None = None,
    config: str | None = None,
    steps: Annotated[int, pydantic.Field(ge=1)] | None = None,
    overrides: list[Annotated[str, pydantic.Field(pattern=r"^\w+=")]] | None = None,
    workers: Annotated[int, pydantic.Field(ge=1)] | None = None,
) -> dict:
  """Builds every corpus, trains and evaluates on them, and publishes a report.

  Args:
    root: the demo corpus goes to root/corpus, its datasets to root/data, the run to root/run.
    corpora: your corpora; empty: the demo corpus, generated.
    demo: the demo corpus's sizes.
    config: the training config (FILE or FILE:ARG); default: the demo's on root/data.
      Required with your corpora.
    steps: training steps (default: the config's).
    overrides: FIELD=VALUE overrides of the training config, as `impax train --set`.
    workers: Beam workers per build (default: the number of CPUs).

  Returns: {"datasets": {output: {split: build summary}}, "train": train's result,
    "report": the report's markdown}.
  """
  on_demo = corpora is None
  if on_demo:
    corpora = generate_demo_corpus(root, demo or DemoCorpus())
    config = config or demo_lib.config_for(root)
  elif config is None:
    raise ValueError("config: a training config is required with your own corpora "
                     "(the demo's expects the demo datasets)")
  datasets = {}
  for corpus in corpora:
    datasets[corpus.output] = build_dataset(
        spec=corpus.spec, output=corpus.output, splits=corpus.splits, options=corpus.options,
        config_file=corpus.config_file, overwrite=corpus.overwrite, workers=workers)
  trained = train(config=config, workdir=os.path.join(root, "run"), steps=steps,
                  overrides=overrides)
  text = report(root, datasets, config, trained, goal=on_demo)
  create_markdown_artifact(text, key=artifact_key("end-to-end", os.path.basename(
      os.path.abspath(root))), description=f"impax end to end in {root}")
  return {"datasets": datasets, "train": trained, "report": text}


def report(root: str, datasets: dict, config: str, trained: dict, goal: bool = False) -> str:
  """The markdown report; with goal, the demo's zero-shot goal next to its result."""
  summary, results, workdir = trained["summary"], trained["eval"], trained["workdir"]
  lines = [f"# impax end to end: {root}", "", "## Datasets", "",
           "| dataset | split | examples | failed | shards |", "|---|---|---|---|---|"]
  for output, splits in datasets.items():
    for split, s in splits.items():
      lines.append(f"| {output} | {split} | {s['num_examples']} | {s['num_failed']} | "
                   f"{len(s['shards'])} |")
  lines += ["", "## Training", "",
            f"`{config}`: {summary['step']} steps in {summary['loop_seconds']:.0f} s, "
            f"{sum(summary['compilations'].values())} compilations", "",
            "## Evaluation", "", "| task | metric | value |", "|---|---|---|"]
  for name, result in results.items():
    for key, value in result.items():
      if isinstance(value, float):
        lines.append(f"| {name} | {key} | {value:.3f} |")
  lines += ["", *(f"**{line}**" for line in demo_lib.zero_shot_lines(results, goal)), "",
            "## Where the results are", "",
            *(f"- dataset: `{output}` (metadata.json, shards, failures-SPLIT.jsonl)"
              for output in datasets),
            f"- run: `{workdir}` (checkpoints/, metrics.jsonl, tensorboard/, plots/, eval.json)",
            ""]
  return "\n".join(lines)
