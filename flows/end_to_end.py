"""end_to_end: your corpora to an evaluated model, with a final report.

    python -m impax.flows.demo demo-output     # make demo: these steps on the demo corpus

1. build_dataset for each corpus, with its splits and options (cached: an unchanged corpus
   is not built again).
2. train (and evaluate) with the config; the run goes to ROOT/run.
3. A report artifact: the datasets, the training, the evaluation and where it all is.

The demo's flow (flows/demo.py: `make demo`, `impax demo`) generates the demo corpus and
runs the same steps (`run` below) on it.
"""

import os
from typing import Annotated

import pydantic
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from impax.flows import artifact_key
from impax.flows.build import BuildOptions, Split, build_dataset
from impax.flows.train import train


class Corpus(pydantic.BaseModel):
  """One of your corpora, built as build_dataset builds it."""
  model_config = pydantic.ConfigDict(extra="forbid")
  spec: str = pydantic.Field("jsonl", description="a registered spec or a spec file")
  output: str = pydantic.Field(min_length=1, description="the dataset folder")
  splits: list[Split] = pydantic.Field(min_length=1, description="in build order")
  options: BuildOptions | None = None
  config_file: str | None = None
  overwrite: bool = False


@flow(name="end_to_end", flow_run_name="end to end in {root}")
def end_to_end(
    root: str,
    corpora: Annotated[list[Corpus], pydantic.Field(min_length=1)],
    config: str,
    steps: Annotated[int, pydantic.Field(ge=1)] | None = None,
    overrides: list[Annotated[str, pydantic.Field(pattern=r"^\w+(\.\w+)*=")]] | None = None,
    workers: Annotated[int, pydantic.Field(ge=1)] | None = None,
) -> dict:
  """Builds every corpus, trains and evaluates on them, and publishes a report.

  Args:
    root: the run goes to root/run.
    corpora: your corpora, each built into its output.
    config: the training config (FILE or FILE:ARG) on their outputs.
    steps: training steps (default: the config's).
    overrides: FIELD=VALUE overrides of the training config, as `impax train --set`.
    workers: Beam workers per build (default: the number of CPUs).

  Returns: {"datasets": {output: {split: build summary}}, "train": train's result,
    "report": the report's markdown}.
  """
  return run(root, corpora, config, steps, overrides, workers)


def run(root: str, corpora: list[Corpus], config: str, steps: int | None = None,
        overrides: list[str] | None = None, workers: int | None = None,
        goal: tuple[str, float] | None = None) -> dict:
  """end_to_end's steps, in the flow that calls it (end_to_end, or the demo's): the
  builds and the training are its subflows. goal: (task, zero-shot top-1) the report
  measures the result against."""
  datasets = {}
  for corpus in corpora:
    datasets[corpus.output] = build_dataset(
        spec=corpus.spec, output=corpus.output, splits=corpus.splits, options=corpus.options,
        config_file=corpus.config_file, overwrite=corpus.overwrite, workers=workers)
  trained = train(config=config, workdir=os.path.join(root, "run"), steps=steps,
                  overrides=overrides)
  text = report(root, datasets, config, trained, goal)
  create_markdown_artifact(text, key=artifact_key("end-to-end", os.path.basename(
      os.path.abspath(root))), description=f"impax end to end in {root}")
  return {"datasets": datasets, "train": trained, "report": text}


def report(root: str, datasets: dict, config: str, trained: dict,
           goal: tuple[str, float] | None = None) -> str:
  """The markdown report; with goal, the goal next to its task's zero-shot result."""
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
  lines += ["", *(f"**{line}**" for line in zero_shot_lines(results, goal)), "",
            "## Where the results are", "",
            *(f"- dataset: `{output}` (metadata.json, shards, failures-SPLIT.jsonl)"
              for output in datasets),
            f"- run: `{workdir}` (checkpoints/, metrics.jsonl, tensorboard/, plots/, eval.json)",
            ""]
  return "\n".join(lines)


def zero_shot_lines(results: dict, goal: tuple[str, float] | None = None) -> list[str]:
  """A line per task with zero-shot classification; goal: (task, top-1) shown on its task's."""
  lines = []
  for name, r in results.items():
    if "zero_shot_top1" in r:
      against = f", goal {goal[1]:.0%}" if goal and name == goal[0] else ""
      lines.append(f"zero-shot classification ({name}) of {r['examples']} {r['split']} examples: "
                   f"top-1 {r['zero_shot_top1']:.1%} (chance {r['zero_shot_chance']:.0%}{against})")
  return lines
