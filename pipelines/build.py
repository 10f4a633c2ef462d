"""The build: a raw corpus becomes ArrayRecord shards, metadata.json and a failures list.

Follow one example top to bottom:
  0. Plan (pipelines/plan.py): the launcher checks the spec, the input, the
     config and the output folder, and decides what every worker needs.
  1. Read (pipelines/read.py): the spec's reader turns the input into Entries
     (a bad line is a BadEntry).
  2. Dedupe (pipelines/graph.py): a second entry with an id already seen is a failure.
  3. Vocabularies (graph.py): the label vocabulary (sorted) and, unless one is
     given, a SentencePiece tokenizer trained on the corpus's captions and label names.
  4. Layout (graph.py): the number of shards, and each entry's shard from its
     index, so which record lands where depends only on the input, never on the runner.
     Steps 3 and 4 share one pass over the entries (the Corpus step).
  5. Process (graph.py, pipelines/example.py): each example is decoded,
     tokenized and serialized on its own, in parallel, into a temporary blob
     (its result, with stats, beside it). A worker holds one example at a
     time; a failure is a result, not a crash.
  6. WriteShard (graph.py): each shard's blobs go into its ArrayRecord file in
     index order, written under a temporary name and published by rename when complete.
  7. Publish (pipelines/publish.py): the launcher merges the shards' sidecars
     into metadata.json and failures-<split>.jsonl and removes the temporary files.

This file is the launcher: `prepare` (step 0), then `run` (steps 1-7); `build` does
both (`impax.build`).

The temporary files live in OUTPUT/.impax-tmp/<split>/; a killed build leaves
them there, and running the same build again reuses every finished shard and
every processed example.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, WorkerOptions

from impax.datasets import metadata, registry
from impax.pipelines import config as config_lib
from impax.pipelines import graph, lock, loopback, plan as plan_lib, progress as progress_lib
from impax.pipelines import publish, read, storage
from impax.pipelines.plan import BuildError, Plan


def build(spec: str, input: str, output: str, split: str = "train", *,
          config_file: str | None = None, settings: dict | None = None,
          workers: int | None = None, beam_args: list[str] = (), overwrite: bool = False,
          max_failure_rate: float | None = None, progress: bool = False) -> dict:
  """Builds one split of a corpus into a prepared dataset, as `impax build` does.

      import impax
      impax.build("jsonl", "corpus/videos-train.jsonl", "data/videos", split="train",
                  settings={"video_short_side": 128, "video_fps": 8.0})
      impax.build("kinetics", "gs://bucket/k400/train.csv", "gs://bucket/prepared/k400",
                  beam_args=["--runner=DataflowRunner", "--project=p", "--region=r"])

  spec: a registered spec (`impax specs`) or a spec file. settings: build settings over
  config_file's, over the spec's and the defaults (pipelines/config.py lists them).
  beam_args: Beam pipeline options (the runner and its options). Returns the split's
  summary (build.run); raises what prepare and run raise.
  """
  plan = prepare(spec, input, output, split, config_lib.layers(config_file, settings),
                 overwrite, beam_args)
  return run(plan, workers, beam_args, progress=progress, max_failure_rate=max_failure_rate)


def prepare(spec_name: str, input_path: str, output: str, split: str = "train",
            settings: tuple[dict, ...] = (), overwrite: bool = False,
            beam_args: list[str] = ()) -> Plan:
  """Checks everything a build needs before it runs; returns its plan (pipelines/plan.py).

  beam_args: the pipeline options `run` will get, refused here if Beam does not
  know one; their object-store settings (e.g. --s3_endpoint_url) apply to the
  launcher's own reads.
  """
  return plan_lib.prepare(spec_name, input_path, output, split, settings, overwrite,
                          pipeline_options(list(beam_args)))


class TooManyFailures(BuildError):
  """More of the split's inputs failed than --max-failure-rate allows."""


def run(plan: Plan, workers: int | None = None, beam_args: list[str] = (),
        quiet: bool = True, progress: bool = True,
        max_failure_rate: float | None = None) -> dict:
  """Runs the pipeline and publishes metadata.json; returns the split's summary:
  its entry of metadata.json's splits, with split and output (and skipped when
  it was already built).

  Raises lock.Locked when another build holds the output (prepare does too, while it
  decides), publish.NoExamples when
  no example was written (nothing is published), and TooManyFailures when more than
  max_failure_rate (0-1) of the inputs failed (the split is published).

  quiet: Beam's logs go to a temporary file, shown only if the pipeline fails.
  progress: report examples processed on stderr as it runs (pipelines/progress.py).
  """
  with lock.locked(plan.output):
    if not plan.up_to_date and plan_lib.finished_shards(plan) != plan.finished:
      # Another build came between this plan and its run (plan.prepare holds the lock
      # only while it decides).
      raise BuildError(f"{plan.output} changed since this build was planned (another build "
                       "ran there): run it again")
    if plan.up_to_date:
      summary = {**_split_json(plan_lib.read_metadata(plan.output), plan),
                 "skipped": "already built with this config and input"}
    else:
      spec = registry.resolve(plan.spec_name, plan.spec_source)
      options = pipeline_options(list(beam_args), workers, read.max_entries(plan.input, spec))
      total = read.max_entries(plan.input, spec, within=None) if progress else None
      plan_lib.mark_started(plan)
      loopback.patch()  # the runner's servers for its workers: on localhost, not every interface
      start = time.monotonic()
      # The progress line goes where stderr goes now, not into _worker_logs' file.
      with _progress(plan, total, progress), _worker_logs(quiet), \
           beam.Pipeline(options=options) as p:
        graph.build_pipeline(p, plan)
      summary = _split_json(publish.finalize(plan, seconds=time.monotonic() - start), plan)
  _check_failure_rate(summary, max_failure_rate)
  return summary


def _check_failure_rate(summary: dict, max_rate: float | None):
  inputs = summary["num_examples"] + summary["num_failed"]
  if max_rate is None or not inputs or summary["num_failed"] / inputs <= max_rate:
    return
  path = storage.join(summary["output"], summary["failures"])
  failures = publish.read_failures(path)
  raise TooManyFailures(
      f"split {summary['split']!r} of {summary['output']}: {summary['num_failed']} of {inputs} "
      f"inputs failed ({summary['num_failed'] / inputs:.1%}, over --max-failure-rate "
      f"{max_rate:g}): {publish.top_reasons(failures)}. The split is published; every failure "
      f"and its reason: {path}")


@contextlib.contextmanager
def _progress(plan: Plan, total: int | None, show: bool):
  if not show:
    yield
    return
  sys.stderr.flush()
  with os.fdopen(os.dup(2), "w") as stream, progress_lib.Progress(plan, total, stream):
    yield


def _split_json(meta: metadata.Metadata, plan: Plan) -> dict:
  return {**metadata.to_json(meta)["splits"][plan.split], "split": plan.split,
          "output": plan.output}


THREADED_WORKERS = 4  # pipeline_options: a small build on up to this many workers runs on threads


def pipeline_options(beam_args: list[str], workers: int | None = None,
                     max_entries: int | None = None) -> PipelineOptions:
  """Beam options from the pass-through args; refuses options Beam does not know.

  `workers` (impax build --workers) becomes the runner's own knob: the
  DirectRunner's processes (default: the CPUs), Dataflow's worker count, Flink's
  parallelism.

  max_entries: at most how many entries the input holds, if known (a small input).
  The DirectRunner starts no more workers than that. A worker process costs seconds
  to start and stop (it imports Beam), more than a small build's whole work: a build
  with one worker runs in the launcher's process (in_memory), and a small input on
  up to THREADED_WORKERS workers on threads of it (multi_threading; ffmpeg, Pillow
  and numpy do the work outside the GIL). Larger builds get processes, which the GIL
  does not hold back (a corpus of small images is mostly Python's work).
  Shards are the same bytes in every mode.
  """
  args = list(beam_args)
  given = PipelineOptions(args)
  _refuse_dask(given.view_as(StandardOptions).runner)
  if unknown := _unknown_options(given, args):
    raise BuildError(f"unknown Beam pipeline option(s): {' '.join(unknown)}")
  has = lambda name: any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)
  runner = given.view_as(StandardOptions).runner
  worker = given.view_as(WorkerOptions)
  if not runner:
    runner = "DirectRunner"
    args.append("--runner=DirectRunner")
  if "Direct" in runner:
    processes = int(workers or os.cpu_count() or 1)
    if max_entries is not None:
      processes = max(1, min(processes, max_entries))
    if not has("direct_running_mode"):
      mode = ("in_memory" if processes == 1 else "multi_threading"
              if max_entries is not None and processes <= THREADED_WORKERS else "multi_processing")
      args.append(f"--direct_running_mode={mode}")
    if not has("direct_num_workers"):
      args.append(f"--direct_num_workers={processes}")
  elif "Dataflow" in runner:
    if not (worker.sdk_container_image or worker.worker_harness_container_image):
      raise BuildError("Dataflow workers need ffmpeg and impax: build the worker image from "
                       "the Dockerfile, push it, and pass --sdk_container_image=IMAGE")
    if workers and not has("num_workers"):
      args.append(f"--num_workers={workers}")
    if workers and not has("max_num_workers"):
      args.append(f"--max_num_workers={workers}")
  elif "Flink" in runner and workers and not has("parallelism"):
    args.append(f"--parallelism={workers}")
  elif workers and (why := _WORKERS_UNMAPPED.get(runner.rsplit(".", 1)[-1])):
    logging.getLogger(__name__).warning("--workers has no effect on %s: %s", runner, why)
  if not has("default_sdk_harness_log_level"):
    # WARN, not WARNING: Java job servers parse the option too, and know only WARN.
    args.append("--default_sdk_harness_log_level=WARN")
  return PipelineOptions(args)


_WORKERS_UNMAPPED = {
    "SparkRunner": "the Spark workers' cores set the parallelism (impax engine spark start --slots N)",
    "PortableRunner": "the job server's engine sets the parallelism (for Flink, pass --parallelism=N)",
    "PrismRunner": "Prism runs the bundles in the launcher's own SDK worker",
}

# The flags of Beam's DaskOptions: its module imports dask, which impax does not install,
# so they are named here, and a user who passes one is told about the runner, not that
# the flag is unknown.
_DASK_FLAGS = frozenset({"dask_client_address", "dask_connection_timeout", "dask_scheduler_file",
                         "dask_client_name", "dask_connection_limit", "dask_npartitions",
                         "dask_partition_size"})


def _refuse_dask(runner: str | None) -> None:
  """Beam's DaskRunner reports success on builds it got wrong: refused before anything runs."""
  if runner and runner.rsplit(".", 1)[-1].lower() in ("dask", "daskrunner"):
    raise BuildError(
        "the DaskRunner cannot build impax datasets. Tried as a user would (Beam 2.77.0), it "
        "re-emits a ParDo's earlier outputs into every side input it computes (the shard "
        "layout saw about five times the entries, wrote 8 shards named -of-00002, and the "
        "tokenizer trained on doubled captions) and still reports success; its Reshuffle "
        "is a no-op, so a build runs as one task; and its multi-output ParDo breaks the "
        "branch that records failed examples. Use the DirectRunner (the default) on one "
        "machine, or a portable runner for a cluster: --runner=PortableRunner, FlinkRunner, "
        "SparkRunner or DataflowRunner (README: \"Dataflow, Flink and Spark\")")


def _unknown_options(options: PipelineOptions, args: list[str]) -> list[str]:
  """The args no PipelineOptions class defines, as given (with a value given
  apart), and single-dash flags, which Beam drops."""
  known = PipelineOptions([]).get_all_options()
  unknown = set(options.get_all_options(retain_unknown_options=True)) - set(known) - _DASK_FLAGS
  out = []
  for i, arg in enumerate(args):
    name = arg[2:].split("=", 1)[0].replace("-", "_")
    if arg.startswith("--") and name in unknown:
      out.append(arg)
      if "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("-"):
        out.append(args[i + 1])
    elif re.fullmatch(r"-[A-Za-z].*", arg):
      out.append(arg)
  return out


@contextlib.contextmanager
def _worker_logs(quiet: bool):
  """Sends Beam's and its workers' stderr chatter to a file, kept on failure: the
  exception's `beam_log` names it (the CLI shows it with an unexpected error)."""
  if not quiet:
    yield
    return
  # The launcher relays each worker's warnings; they are noise unless it fails.
  logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
  fd, path = tempfile.mkstemp(prefix="impax-beam-", suffix=".log")
  sys.stderr.flush()
  saved = os.dup(2)
  os.dup2(fd, 2)
  try:
    yield
  except BaseException as e:
    os.dup2(saved, 2)
    e.beam_log = path
    raise
  else:
    os.dup2(saved, 2)
    os.remove(path)
  finally:
    os.close(saved)
    os.close(fd)


def describe(summary: dict) -> str:
  """A build summary (run's result) as text: a line, and one naming the failures if any."""
  shards = summary["shards"]
  size = sum(x["num_bytes"] for x in shards)
  lines = [f"{summary['output']} [{summary['split']}]: {summary['num_examples']} examples, "
           f"{summary['num_failed']} failed, {len(shards)} shard(s), {size / 1e6:.1f} MB"
           + (f" ({summary['skipped']})" if "skipped" in summary
              else f", {summary['build_seconds']:.1f} s")]
  if summary["num_failed"]:
    stages = ", ".join(f"{k}: {v}" for k, v in summary["failures_by_stage"].items())
    lines.append(f"  failures by stage: {stages}; "
                 f"see {os.path.join(summary['output'], summary['failures'])}")
  return "\n".join(lines)
