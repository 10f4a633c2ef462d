"""build_dataset: the splits of one dataset through the Beam build (pipelines/build.py).

    python -m impax.flows.serve   # then run build_dataset from the UI, or:
    prefect deployment run build_dataset/impax --params '{"spec": "jsonl", "output": "/data/videos",
        "splits": [{"name": "train", "input": "/corpus/videos-train.jsonl"}]}'

1. check: the spec, each input and the options, exactly as `impax build` checks them,
   before anything runs; each split's cache key is the hash of its input and config.
2. build_split, one task per split, in order (the first split built into an output
   fixes its labels and tokenizer): retried with back-off, under a timeout. A retry
   resumes the killed build (finished shards are kept). Its result is cached on the
   key, so an unchanged rebuild is skipped; a split the output does not hold as built
   (deleted, half built) is built whatever the cache holds.
3. publish: metadata.json (written by the build) as artifacts: a table of examples,
   failures and shards per split, and a markdown summary of the failure reasons.
4. card: the dataset card (`impax card`, tools/card.py) written to OUTPUT/card.html,
   and an artifact with its path and each split's contact sheet inline.
5. When a split was built (not served from the cache, not already there), the event
   `impax.dataset.built`: the train-demo deployment's trigger (flows/deployments.py)
   starts training when the demo's build (build_demo_dataset, flows/demo.py: these steps
   on a demo dataset) built new data, and only then.

The run is named after what it builds (`build images [train, test]`); its final
state's message says which splits were built and which came from the cache, and a
refused build's (a missing input, a bad option) is the one-line reason.
"""

import base64
import collections
import hashlib
import io
import json
import os
from typing import Annotated, Literal

import pydantic
from PIL import Image
from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.states import Completed, Failed
from prefect.tasks import exponential_backoff

from impax.tools import card as card_lib
from impax.datasets import metadata
from impax.flows import artifact_key, markdown_text, retried_unless
from impax.pipelines import build, lock, storage
from impax.pipelines import publish as publish_lib
from impax.pipelines import plan as plan_lib
from impax.pipelines import config as config_lib

SPLIT_NAME = r"^[A-Za-z0-9_.-]+$"


class Split(pydantic.BaseModel):
  """One split of a dataset and the raw input it is built from."""
  model_config = pydantic.ConfigDict(extra="forbid")
  name: str = pydantic.Field("train", pattern=SPLIT_NAME, description="split name")
  input: str = pydantic.Field(min_length=1, description="the corpus input: a manifest, CSV or "
                              "folder (local, gs://, s3://)")


# Every processing option of `impax build`, unset by default so that the spec's
# settings and the config file apply (flags > file > spec > defaults, as in the CLI).
BuildOptions = pydantic.create_model(
    "BuildOptions", __config__=pydantic.ConfigDict(extra="forbid"),
    __doc__="Processing options; an unset option takes the config file's, the spec's or "
            "the default value.",
    **{name: (type(field.default) | None,
              pydantic.Field(None, description=f"{field.metadata['help']} [{field.default!r}]"))
       for name, field in config_lib.FIELDS.items()})


# -- 1: check -----------------------------------------------------------------


@task(name="check", task_run_name="check", cache_policy=NO_CACHE)
def check(spec: str, output: str, splits: list[Split], settings: tuple[dict, ...],
          overwrite: bool | Literal["changed"], beam_options: list[str] = ()) -> list[dict]:
  """Refuses a build that cannot run; returns each split's cache key and whether it is built.

  With overwrite, whatever the build would replace is removed here, as `impax build
  --overwrite` does; with "changed", only a split built from another input than it has now.
  """
  names = [s.name for s in splits]
  if len(set(names)) != len(names):
    raise build.BuildError(f"splits: each split name once, got {names}")
  checked = []
  for split in splits:
    plan = build.prepare(spec, split.input, output, split.name, settings,
                         overwrite=_input_changed(output, split) if overwrite == "changed"
                         else overwrite, beam_args=beam_options)
    # What the built split depends on, as the build itself decides "already built"; not
    # the runner, which gives the same bytes.
    key = {"output": _absolute(output), "split": split.name, "config_hash": plan.config_hash,
           "input_sha256": plan.input_sha256,
           "sharding": {k: getattr(plan.config, k) for k in config_lib.SPLIT_FIELDS}}
    checked.append({"split": split.name, "up_to_date": plan.up_to_date,
                    "cache_key": "impax-build-" + hashlib.sha256(
                        json.dumps(key, sort_keys=True).encode()).hexdigest()})
  return checked


def _input_changed(output: str, split: Split) -> bool:
  """Whether output holds split built from another input than split.input is now."""
  meta = plan_lib.read_metadata(output)
  built = meta.splits.get(split.name) if meta else None
  return bool(built) and built.input_sha256 != plan_lib.input_sha256(split.input)


def _absolute(path: str) -> str:
  return path if "://" in path else os.path.abspath(path)


# -- 2: build -----------------------------------------------------------------


@task(name="build_split", task_run_name="build {split}", persist_result=True,
      cache_key_fn=lambda context, parameters: parameters["cache_key"],
      # A held output, no example written, too many failed: the same on every attempt.
      retry_condition_fn=retried_unless(build.BuildError, lock.Locked))
def build_split(spec: str, input: str, output: str, split: str, settings: tuple[dict, ...],
                workers: int | None, cache_key: str, beam_options: list[str] = (),
                max_failure_rate: float | None = None) -> dict:
  """Builds (or resumes) one split; returns the build's summary (see pipelines/build.py)."""
  logger = get_run_logger()
  plan = build.prepare(spec, input, output, split, settings, beam_args=beam_options)
  if plan.resumed_shards:
    logger.info("resuming: %d shard(s) already finished", plan.resumed_shards)
  summary = build.run(plan, workers=workers, beam_args=beam_options,
                      max_failure_rate=max_failure_rate)
  logger.info("%s [%s]: %d examples, %d failed, %d shard(s)%s", output, split,
              summary["num_examples"], summary["num_failed"], len(summary["shards"]),
              f" ({summary['skipped']})" if "skipped" in summary else
              f" in {summary['build_seconds']:.1f} s")
  return summary


# -- 3: publish ---------------------------------------------------------------


@task(name="publish", task_run_name="publish", cache_policy=NO_CACHE)
def publish(output: str, results: dict[str, tuple[dict, bool]],
            card_path: str | None = None) -> str:
  """Artifacts from metadata.json and the failures files, the build's linking the dataset
  card at card_path; returns metadata.json's path."""
  meta_path = storage.join(output, "metadata.json")
  meta = metadata.loads(storage.read(meta_path), where=meta_path)
  rows = []
  for split, (summary, cached) in results.items():
    built = meta.split(split)
    rows.append({
        "split": split, "examples": built.num_examples, "failed": built.num_failed,
        "shards": len(built.shards), "MB": round(built.num_bytes / 1e6, 2),
        "build seconds": built.build_seconds,
        "this run": "from cache" if cached else summary.get("skipped", "built")})
  create_table_artifact(
      rows, key=artifact_key("build", meta.name),
      description=f"Dataset {meta.name!r} in {output} (config {meta.config_hash[:12]}): "
                  "examples, failures and shards per split."
                  + (f" Its dataset card: `{card_path}` ([open it](file://{card_path}))."
                     if card_path else ""))
  create_markdown_artifact(markdown_text(failure_report(output, meta, list(results))),
                           key=artifact_key("build", meta.name, "failures"),
                           description=f"Why inputs of {meta.name!r} failed, per split.")
  return meta_path


def failure_report(output: str, meta: metadata.Metadata, splits: list[str],
                   examples: int = 20) -> str:
  """Markdown: per split, failures by stage and by reason, and the first few failed inputs."""
  lines = [f"# Failures of {meta.name} ({output})", ""]
  for split in splits:
    built = meta.split(split)
    lines.append(f"## {split}: {built.num_failed} of "
                 f"{built.num_examples + built.num_failed} inputs failed")
    if not built.num_failed:
      lines.append("")
      continue
    failures = publish_lib.read_failures(storage.join(output, built.failures))
    reasons = collections.Counter((f["stage"], publish_lib.reason(f)) for f in failures)
    lines += ["", "| stage | reason | inputs |", "|---|---|---|"]
    for (stage, reason), count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
      lines.append(f"| {stage} | {_cell(reason)} | {count} |")
    lines += ["", "| source | id | stage | error |", "|---|---|---|---|"]
    for f in failures[:examples]:
      lines.append(f"| {_cell(f['source'])} | {_cell(f['id'])} | {f['stage']} | "
                   f"{_cell(f['error'])} |")
    if len(failures) > examples:
      lines.append(f"\n{len(failures) - examples} more in "
                   f"{storage.join(output, built.failures)}")
    lines.append("")
  return "\n".join(lines)


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


# -- 4: card ------------------------------------------------------------------


@task(name="card", task_run_name="card", cache_policy=NO_CACHE)
def card(output: str) -> str | None:
  """Writes the dataset card and attaches it: its path and each split's contact sheet
  inline (as JPEG, a tenth of the PNG's bytes). Returns the card's path; None for a
  remote output, whose card would stage every shard here first."""
  logger = get_run_logger()
  meta_path = storage.join(output, "metadata.json")
  meta = metadata.loads(storage.read(meta_path), where=meta_path)
  if not storage.is_local(output):
    logger.info("no card for remote %s: `impax card %s --output PATH` stages it and writes one",
                output, output)
    return None
  written = card_lib.write_card(output)
  path = os.path.abspath(written.html)
  lines = [f"# Dataset card: {meta.name} {meta.version}", "",
           f"The card: `{path}` ([open it](file://{path})), its PNGs in "
           f"`{card_lib.picture_folder(path)}`. Contact sheets of sampled examples:", ""]
  for split, s in meta.splits.items():
    lines.append(f"## {split}: {s.num_examples} examples, {s.num_failed} failed")
    if split in written.contact_sheets:
      lines.append(f"![contact sheet of {split}](data:image/jpeg;base64,"
                   f"{_jpeg_base64(written.contact_sheets[split])})")
    else:
      lines.append("No frames or images.")
    lines.append("")
  create_markdown_artifact(markdown_text("\n".join(lines)),
                           key=artifact_key("build", meta.name, "card"),
                           description=f"The dataset card of {meta.name!r}: {path}")
  logger.info("dataset card: %s", path)
  return path


def _jpeg_base64(png_path: str) -> str:
  buffer = io.BytesIO()
  Image.open(png_path).convert("RGB").save(buffer, format="JPEG", quality=85)
  return base64.b64encode(buffer.getvalue()).decode()


# -- the flows ----------------------------------------------------------------

BUILT = "impax.dataset.built"  # the event of a build that wrote new data


def _split_names(splits) -> str:
  return ", ".join(s["name"] if isinstance(s, dict) else s.name for s in splits)


def _run_name() -> str:
  """`build images [train, test]`: the dataset (its folder's name) and its splits."""
  params = runtime.flow_run.parameters
  return (f"build {os.path.basename(params['output'].rstrip('/'))} "
          f"[{_split_names(params['splits'])}]")


@flow(name="build_dataset", flow_run_name=_run_name)
def build_dataset(
    spec: str,
    output: str,
    splits: Annotated[list[Split], pydantic.Field(min_length=1)],
    options: BuildOptions | None = None,
    config_file: str | None = None,
    overwrite: bool = False,
    workers: Annotated[int, pydantic.Field(ge=1)] | None = None,
    retries: Annotated[int, pydantic.Field(ge=0)] = 2,
    retry_delay_seconds: Annotated[float, pydantic.Field(ge=0)] = 30.0,
    timeout_minutes: Annotated[float, pydantic.Field(gt=0)] = 360.0,
    beam_options: list[str] | None = None,
    max_failure_rate: Annotated[float, pydantic.Field(ge=0, le=1)] | None = None,
) -> dict[str, dict]:
  """Builds each split of one dataset into ArrayRecord shards with metadata (`impax build`).

  Args:
    spec: a registered spec (`impax specs`; `jsonl` is the generic manifest) or a spec file.
    output: the dataset folder (local, gs://, s3://).
    splits: the splits in build order; the first built into an output fixes its label
      vocabulary and trained tokenizer.
    options: processing options (see `impax build --help`).
    config_file: a JSON or TOML file of options; the options above win over it.
    overwrite: replace a build of another config or input in output.
    workers: parallel Beam workers (default: the number of CPUs).
    retries: attempts after a failed split build; each resumes the last.
    retry_delay_seconds: wait before the first retry, doubled for each next one.
    timeout_minutes: a split build running longer fails (and is retried).
    beam_options: Beam pipeline options, what `impax build ... --` takes: a runner and
      its settings, e.g. the last line of `impax engine flink start`, split on spaces.
      The runner gives the same bytes, so a build on another is served from the cache.
    max_failure_rate: fail a split in which more than this share (0-1) of the inputs
      failed (it is published); a split with no example written always fails.

  Returns: {split: the build's summary}.
  """
  settings = config_lib.layers(config_file, options.model_dump() if options else None)
  resource = {"prefect.resource.id": f"impax.dataset.{_absolute(output)}",
              "prefect.resource.name": os.path.basename(output.rstrip("/"))}
  return build_splits(spec, output, splits, settings, overwrite, workers, retries,
                      retry_delay_seconds, timeout_minutes, resource, payload={},
                      beam_options=beam_options or [], max_failure_rate=max_failure_rate)


def build_splits(spec, output, splits, settings, overwrite, workers, retries,
                 retry_delay_seconds, timeout_minutes, resource: dict, payload: dict,
                 beam_options: list[str] = (), max_failure_rate: float | None = None):
  """The body of build_dataset and of the demo's build_demo_dataset (flows/demo.py), in
  the flow that calls it: check, build each split, card, publish, and the event (about
  resource, with payload) when something was built. The final state (Completed or,
  refused, Failed) has the message."""
  logger = get_run_logger()
  try:
    checked = check(spec, output, splits, settings, overwrite, beam_options)
  except (build.BuildError, lock.Locked) as e:  # refused before anything ran: the reason says
    return Failed(message=str(e), data=e)
  results = {}
  for split, facts in zip(splits, checked):
    build_task = build_split.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_seconds),
        timeout_seconds=timeout_minutes * 60,
        # Not built in the output (deleted, half built): build, whatever the cache holds.
        refresh_cache=not facts["up_to_date"])
    state = build_task(spec, split.input, output, split.name, settings, workers,
                       facts["cache_key"], beam_options, max_failure_rate, return_state=True)
    try:
      summary = state.result()
    except (build.BuildError, lock.Locked) as e:  # no example written, too many failed, locked
      return Failed(message=str(e), data=e)
    results[split.name] = (summary, state.name == "Cached")
    if state.name == "Cached":
      logger.info("%s [%s]: unchanged input and config, served from the cache", output, split.name)
  publish(output, results, card(output))
  outcome = {}
  for split, (summary, cached) in results.items():
    outcome.setdefault("from the cache" if cached else
                       "already built" if "skipped" in summary else "built", []).append(split)
  if outcome.get("built"):
    emit_event(BUILT, resource=resource,
               payload={**payload, "output": _absolute(output), "splits": outcome["built"]})
  return Completed(message="; ".join(f"{', '.join(names)}: {how}"
                                     for how, names in outcome.items()),
                   data={split: summary for split, (summary, _) in results.items()})
