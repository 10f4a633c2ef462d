"""The `impax` command line.

Each subcommand imports what it runs inside its own function, so `impax --help`
and `impax specs` answer without importing Beam, JAX or TensorFlow.
"""

import argparse
import errno
import json
import logging
import re
import sys
import traceback


def _build_parser(sub):
  from impax.pipelines import config as config_lib
  p = sub.add_parser(
      "build", help="build a raw corpus into ArrayRecord shards",
      description="Build a raw corpus into ArrayRecord shards with metadata. Beam pipeline "
                  "options go after `--`, e.g. `-- --runner=DataflowRunner --project=P "
                  "--region=R --temp_location=gs://B/tmp`.",
      usage="impax build SPEC --input PATH --output DIR [--split NAME] [--workers N] "
            "[options] [-- beam pipeline options]")
  p.add_argument("spec", metavar="SPEC", help="a registered spec name (see `impax specs`) or a spec file (*.py)")
  p.add_argument("--input", required=True, help="the corpus input: a manifest, CSV or folder (local, gs://, s3://)")
  p.add_argument("--output", required=True, help="the dataset folder (local, gs://, s3://)")
  p.add_argument("--split", default="train", help="split name (default: train)")
  p.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPU count)")
  p.add_argument("--config", help="settings file (JSON or TOML) with the options below")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing build of another config or input")
  p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                 help="show Beam's logs as it runs, and the traceback of an error")
  p.add_argument("--quiet", action="store_true",
                 help="no progress line (examples processed, failures, rate, time left)")
  p.add_argument("--max-failure-rate", type=_rate, default=None, metavar="RATE",
                 help="fail (exit 8) when more than this share (0-1) of the inputs failed; "
                      "a build that wrote no example always fails")
  group = p.add_argument_group("processing options (defaults in brackets)")
  for name, field in config_lib.FIELDS.items():
    group.add_argument(f"--{name.replace('_', '-')}", dest=f"set_{name}",
                       type=_flag_bool if isinstance(field.default, bool) else type(field.default),
                       default=None, metavar=type(field.default).__name__.upper(),
                       help=f"{field.metadata['help']} [{field.default!r}]")
  p.set_defaults(func=_build)


def _flag_bool(text: str) -> bool:
  if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
  return text.lower() in ("true", "1", "yes")


def _rate(text: str) -> float:
  try:
    rate = float(text)
  except ValueError:
    rate = -1.0
  if not 0 <= rate <= 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a rate between 0 and 1")
  return rate


def _build(args, beam_args):
  from impax.pipelines import build, config as config_lib
  settings = config_lib.layers(args.config, {k[4:]: v for k, v in vars(args).items()
                                             if k.startswith("set_")})
  if args.workers is not None and args.workers < 1:
    raise build.BuildError("--workers must be at least 1")
  plan = build.prepare(args.spec, args.input, args.output, args.split, settings,
                       overwrite=args.overwrite, beam_args=beam_args)
  if plan.resumed_shards and not plan.up_to_date:
    print(f"resuming: {plan.resumed_shards} shard(s) already finished", file=sys.stderr)
  summary = build.run(plan, workers=args.workers, beam_args=beam_args, quiet=not args.verbose,
                      progress=not args.quiet, max_failure_rate=args.max_failure_rate)
  print(build.describe(summary))
  return 0


def _inspect_parser(sub):
  p = sub.add_parser("inspect", help="summarize a prepared dataset; write an example's frames to PNG")
  p.add_argument("dir", metavar="DIR")
  p.add_argument("--split", help="split to show examples of (default: train)")
  p.add_argument("--example", type=int, help="print this example (index in the split)")
  p.add_argument("--frames-to", metavar="DIR", help="with --example: write its frames/image as PNG here")
  p.add_argument("--json", action="store_true", help="print metadata.json")
  p.set_defaults(func=_inspect)


def _inspect(args, beam_args):
  from impax.tools import inspect
  return inspect.main(args.dir, split=args.split, example=args.example, frames_to=args.frames_to,
                      as_json=args.json)


def _verify_parser(sub):
  p = sub.add_parser(
      "verify", help="check a prepared dataset's shards against its metadata.json",
      description="Checks that every shard metadata.json lists exists with its recorded size "
                  "and sha256; with --deep also counts and parses every record. Exits 1 naming "
                  "each bad file and what is wrong. Beam options for gs:// or s3:// go after "
                  "`--`, as for build.")
  p.add_argument("dir", metavar="DIR", help="the dataset folder (local, gs://, s3://)")
  p.add_argument("--deep", action="store_true",
                 help="also parse every record against the feature spec and count them")
  p.add_argument("--split", help="check this split only (default: all)")
  p.add_argument("--json", action="store_true", help="print the report as JSON")
  p.set_defaults(func=_verify)


def _verify(args, beam_args):
  from apache_beam.options.pipeline_options import PipelineOptions
  from impax.tools import verify
  from impax.pipelines import storage
  storage.configure(PipelineOptions(beam_args))  # object-store settings, as for build
  return verify.main(args.dir, deep=args.deep, split=args.split, as_json=args.json)


def _dedup_parser(sub):
  p = sub.add_parser(
      "dedup", help="find duplicate examples within and across datasets, and test-set leakage",
      description="Groups the records of the datasets that are the same example: equal "
                  "media bytes and clip, or close perceptual fingerprints (video and image "
                  "hashes within --threshold bits; sounds aligned at their best shift). With "
                  "--against, lists the training records (of DATASET) that duplicate a record "
                  "of the evaluation datasets: leaks. A DATASET is a folder (every split) or "
                  "DIR:SPLIT[,SPLIT], e.g. `impax dedup DIR:train --against DIR:test`. Give "
                  "the report to training as a task's `exclude` to skip them.")
  p.add_argument("datasets", metavar="DATASET", nargs="+",
                 help="prepared dataset folders, each DIR or DIR:SPLIT[,SPLIT]")
  p.add_argument("--against", metavar="DATASET", nargs="+", default=[],
                 help="evaluation datasets: list the records of DATASET that they hold too")
  p.add_argument("--json", metavar="PATH", help="write the report (all groups and leaks) here")
  p.add_argument("--threshold", type=int, default=None,
                 help="most differing bits of 64 for a near-duplicate video or image (default 10)")
  p.set_defaults(func=_dedup)


def _dedup(args, beam_args):
  from impax.tools import dedup
  return dedup.main(args.datasets, against=args.against, json_path=args.json,
                    threshold=args.threshold)


def _card_parser(sub):
  p = sub.add_parser("card", help="write a prepared dataset's card: one self-contained HTML page")
  p.add_argument("dir", metavar="DIR")
  p.add_argument("--output", metavar="PATH", help="the page (default DIR/card.html); its PNGs go "
                 "to the folder beside it named after it (DIR/card/)")
  p.add_argument("--samples", type=int, default=16, metavar="N",
                 help="examples per split on the contact sheet (seeded sample; default 16)")
  p.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
  p.set_defaults(func=_card)


def _card(args, beam_args):
  from impax.tools import card
  written = card.write_card(args.dir, args.output, samples=args.samples, seed=args.seed)
  print(f"wrote {written.html} and {len(written.pngs)} PNG(s) in "
        f"{card.picture_folder(written.html)}")
  return 0


def _specs_parser(sub):
  p = sub.add_parser("specs", help="list the registered dataset specs")
  p.set_defaults(func=lambda args, beam_args: _specs())


def _specs():
  from impax.datasets import registry
  for name in registry.names():
    print(f"{name:16s} {registry.get(name).description}")
  return 0


def _demo_corpus_parser(sub):
  p = sub.add_parser("demo-corpus", help="generate the demo corpus (moving digits with sound)")
  p.add_argument("dir", metavar="DIR")
  for name in ("videos", "images", "audio"):  # None: the demo's (impax.demo.SIZES)
    p.add_argument(f"--{name}", type=int, default=None,
                   help=f"{name}, all splits together (default: the demo's)")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(func=_demo_corpus)


def _demo_corpus(args, beam_args):
  from impax import demo
  sizes = {name: demo.SIZES[name] if getattr(args, name) is None else getattr(args, name)
           for name in demo.SIZES}
  manifests = demo.write_corpus(args.dir, **sizes, seed=args.seed)
  for name, path in manifests.items():
    print(f"{name:14s} {path}")
  # One model trains on all of them: build each with this one (impax build ... --tokenizer).
  tokenizer = demo.settings(args.dir)["tokenizer"]
  print(f"{'tokenizer':14s} {tokenizer}  (build each with --tokenizer {tokenizer})")
  return 0


def _demo_parser(sub):
  p = sub.add_parser("demo", help="the main job end to end on the demo corpus (make demo's flow)")
  p.add_argument("dir", metavar="DIR", nargs="?", default="demo")
  p.add_argument("--workers", type=int, default=None, help="build workers (default: CPUs)")
  p.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
  p.set_defaults(func=_demo)


def _demo(args, beam_args):
  from impax.flows import demo
  return demo.run_demo(args.dir, steps=args.steps, workers=args.workers)


def _engine_parser(sub):
  p = sub.add_parser(
      "engine", help="start, check or stop a Flink or Spark cluster on loopback for builds",
      description="A Flink or Spark cluster on this machine (the engine's processes, Beam's "
                  "job server and a Python SDK worker pool), or Beam's Python job service "
                  "(portable), listening on 127.0.0.1 unless --bind names another address. "
                  "`start` prints on its last line the Beam options for "
                  "`impax build ... -- OPTIONS`; `fetch` downloads an engine's jars once "
                  "(make install does).",
      usage="impax engine {flink,spark,portable,prism} {start,status,stop,fetch} [options]")
  p.add_argument("engine", choices=("flink", "spark", "portable", "prism"))
  p.add_argument("action", choices=("start", "status", "stop", "fetch"))
  p.add_argument("--state-dir", help="where the cluster keeps its process ids, config and logs "
                                     "(default: the engine cache's run/ENGINE)")
  p.add_argument("--slots", type=int, default=2,
                 help="task slots of the TaskManager / cores of the Spark worker (default: 2)")
  p.add_argument("--master", help="an engine already running, to start only Beam's job server "
                                  "and the SDK workers for: Flink's HOST:PORT (its REST port), "
                                  "Spark's spark://HOST:PORT")
  p.add_argument("--bind", default="127.0.0.1", metavar="HOST",
                 help="the address every process of `start` listens on (default: 127.0.0.1). "
                      "Beam's job server and SDK worker pool run any code they are sent, without "
                      "authentication: another address gives whoever reaches it code execution "
                      "on this machine")
  p.add_argument("--timeout", type=float, default=180, help="seconds to wait for each process")
  p.set_defaults(func=_engine_command)


def _engine_command(args, beam_args):
  from impax.pipelines import engine
  try:
    if args.action == "fetch":
      engine.fetch(args.engine, log=lambda m: print(m, file=sys.stderr))
      print(f"{args.engine}: fetched in {engine.cache_dir()}")
      return 0
    if args.engine == "prism":  # the PrismRunner starts Prism for each build
      if args.action != "start":
        print("prism: nothing runs between builds (each build starts its own Prism)")
        return 0
      if not engine.fetched("prism"):
        engine.fetch("prism", log=lambda m: print(m, file=sys.stderr))
      print(" ".join(engine.prism_options()))
      return 0
    if args.action == "start":
      state = engine.start(args.engine, args.state_dir, slots=args.slots, timeout=args.timeout,
                           master=args.master, bind=args.bind)
      for role, process in state["processes"].items():
        print(f"{role:16s} pid {process['pid']:<8d} log {process['log']}")
      if "ui" in state:
        print(f"{'web UI':16s} {state['ui']}")
      print(" ".join(state["beam_options"]))
      return 0
    directory = args.state_dir or engine.state_dir(args.engine)
    stopping = args.action == "stop"
    state = engine.stop(args.engine, directory) if stopping else engine.read_state(directory)
    if state is None:
      print(f"no {args.engine} cluster was started from {directory}", file=sys.stderr)
      return 3
    if stopping:
      print(f"{args.engine}: stopped {len(state['processes'])} process(es)")
      return 0
    alive = engine.status(state)
    for role, running in alive.items():
      print(f"{role:16s} pid {state['processes'][role]['pid']:<8d} "
            f"{'running' if running else 'NOT RUNNING'}")
    if "ui" in state:
      print(f"{'web UI':16s} {state['ui']}")
    if "beam_options" in state:
      print(" ".join(state["beam_options"]))
    return 0 if all(alive.values()) else 1
  except engine.EngineError as e:
    print(f"impax: error: {e}", file=sys.stderr)
    return 2


def _model_parser(sub):
  model = sub.add_parser("model", help="inspect model presets")
  info = model.add_subparsers(metavar="COMMAND", required=True).add_parser(
      "info", help="print a preset's parameter and FLOP counts and layer layout as JSON")
  info.add_argument("preset", metavar="PRESET", help="tiny, S, B, L, MoE-S, MoE-B or MoE-L")
  info.add_argument("--tokens", type=int, default=256,
                    help="sequence length for attention FLOPs (default 256)")
  info.set_defaults(func=_model_info)


def _model_info(args, beam_args):
  from impax.model import get_config, info  # JAX: imported only when asked for
  print(json.dumps(info.info(get_config(args.preset), tokens=args.tokens), indent=2))
  return 0


def _config_args(p) -> None:
  """CONFIG and --set, as every command on a training config takes them."""
  p.add_argument("config", metavar="CONFIG",
                 help="a Python config file defining get_config(); FILE:ARG passes ARG to it")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a config field, e.g. --set steps=200; a task's by the task's "
                      "name, --set tasks.video_text.token_budget=4096, and fields below it: "
                      "tasks.video_text.augment.flip=false, a bucket by its index "
                      "tasks.image_text.buckets.0.image=[48,48]. VALUE is JSON (null where a "
                      "field may be None), a str as given")


def _train_parser(sub):
  for name, help_text in (("train", "train a model with AGD on prepared datasets (a config file)"),
                          ("eval", "evaluate a run's checkpoint; writes WORKDIR/eval.json")):
    p = sub.add_parser(name, help=help_text)
    _config_args(p)
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and plots go here")
    if name == "eval":
      p.add_argument("--split", metavar="NAME",
                     help="evaluate every task on this split of its dataset (e.g. validation), "
                          "written to WORKDIR/eval-NAME.json; default: each task's eval_split")
      p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                     help="the run's latest checkpoint, or the best by validation (keep_best)")
      p.add_argument("--probe", action="store_true",
                     help="also fit a linear probe on the frozen embeddings of each labelled "
                          "dataset (cached in WORKDIR/embeddings)")
    if name == "train":
      p.add_argument("--coordinator", metavar="HOST:PORT",
                     help="multi-process run: address of process 0 (jax.distributed)")
      p.add_argument("--num-processes", type=int, help="multi-process run: number of processes")
      p.add_argument("--process-id", type=int, help="multi-process run: this process's index")
      p.add_argument("--allow-config-change", action="store_true",
                     help="resume WORKDIR even under a config that changes what defines its run "
                          "(seed, tasks, data, buckets, model, optimizer); recorded in "
                          "summary.json")
    p.set_defaults(func=_train if name == "train" else _eval)


def _plan_parser(sub):
  p = sub.add_parser("plan", help="print a training config's mixture before training: each "
                                  "task's batches, steps, epochs and tokens")
  _config_args(p)
  p.add_argument("--target-share", metavar="TASK=SHARE,...",
                 help="solve for the intervals (schedule 'intervals') or weights ('random') "
                      "that give these shares, e.g. image_text=0.5,video_text=0.5")
  p.add_argument("--of", choices=("steps", "tokens"), default="steps",
                 help="--target-share is of the optimizer steps (default) or of the tokens")
  p.add_argument("--json", action="store_true", help="print the plan as JSON")
  p.set_defaults(func=_plan)


def _plan(args, beam_args):
  from impax.train import plan
  plan.main(args.config, args.set, target=args.target_share, of=args.of, as_json=args.json)
  return 0


def _train(args, beam_args):
  from impax.train import trainer
  return trainer.main(args.config, args.workdir, args.set, coordinator=args.coordinator,
                      num_processes=args.num_processes, process_id=args.process_id,
                      allow_config_change=args.allow_config_change)


def _eval(args, beam_args):
  from impax.train import evaluate
  result = evaluate.main(args.config, args.workdir, args.set, split=args.split,
                         checkpoint_name=args.checkpoint, probe=args.probe)
  print(json.dumps(result, indent=2))
  return 0


class _Parser(argparse.ArgumentParser):
  """A usage error is one `impax: error:` line, like every other error."""

  def error(self, message):
    self.exit(EXIT_USAGE, f"impax: error: {message} (see `{self.prog} --help`)\n")


# Exit codes, one per kind of failure a script may want to tell apart (README: "Errors").
EXIT_INTERNAL = 70  # a fault of impax's (sysexits' EX_SOFTWARE): --verbose shows the traceback
EXIT_USAGE = 2  # a bad option, setting, spec or config: fix the command
EXIT_MISSING = 3  # an input, file or dataset that does not exist
EXIT_PERMISSION = 4  # permission denied, or a read-only filesystem
EXIT_DISK_FULL = 5  # no space left on a device
EXIT_STORE = 6  # an object store or endpoint: credentials missing or refused, unreachable
EXIT_LOCKED = 7  # another build holds the output
EXIT_FAILED = 8  # the build ran, but wrote no example or failed above --max-failure-rate


def _chain(e: BaseException):
  """The exception and those it was raised from or during."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


_OS_ERRORS = {
    errno.ENOSPC: (EXIT_DISK_FULL, "no space left on device", "No space left on device"),
    errno.EDQUOT: (EXIT_DISK_FULL, "disk quota exceeded", "Disk quota exceeded"),
    errno.EACCES: (EXIT_PERMISSION, "permission denied", "Permission denied"),
    errno.EPERM: (EXIT_PERMISSION, "operation not permitted", "Operation not permitted"),
    errno.EROFS: (EXIT_PERMISSION, "read-only file system", "Read-only file system"),
}
# Beam's runners hand a worker's exception back as text: "OSError: [Errno 28] No space
# left on device: '/out/x' [while running 'Process']".
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] [^:'\n\[]+(?:: '([^'\n]+)')?")
_STORE_TEXT = re.compile(r"NoCredentialsError|Unable to locate credentials|DefaultCredentialsError|"
                         r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|"
                         r"Could not connect to the endpoint URL|EndpointConnectionError|"
                         r"Connection refused|Max retries exceeded|Name or service not known")


def _what_to_do(code: int, args) -> str:
  resumable = getattr(args, "func", None) is _build
  resume = " Run the same command again to resume: finished shards and examples are kept." \
      if resumable else ""
  return {
      EXIT_DISK_FULL: "free some space or use another output." + resume,
      EXIT_PERMISSION: "give this user write access there, or choose another path." + resume,
      EXIT_STORE: "check the store's credentials and endpoint (AWS_* and AWS_ENDPOINT_URL, or "
                  "--s3_endpoint_url after `--`; Google's application default credentials or "
                  "STORAGE_EMULATOR_HOST)." + resume,
  }.get(code, "")


def _error(e: BaseException, args) -> tuple[int, str]:
  """(exit code, one line) for an exception a user can cause or meet; (EXIT_INTERNAL, ...)
  for anything else."""
  plan = sys.modules.get("impax.pipelines.plan")
  lock = sys.modules.get("impax.pipelines.lock")
  publish = sys.modules.get("impax.pipelines.publish")
  build = sys.modules.get("impax.pipelines.build")
  where = getattr(args, "output", None) or getattr(args, "dir", None) or ""
  for x in _chain(e):
    if lock and isinstance(x, lock.Locked):
      return EXIT_LOCKED, str(x)
    if (storage := sys.modules.get("impax.pipelines.storage")) and isinstance(
        x, storage.StoreError):
      return EXIT_STORE, str(x)
    if (publish and isinstance(x, publish.NoExamples)) or (
        build and isinstance(x, build.TooManyFailures)):
      return EXIT_FAILED, str(x)
    if isinstance(x, OSError) and x.errno in _OS_ERRORS:
      code, what, _ = _OS_ERRORS[x.errno]
      path = x.filename or where
      return code, f"{what}: {path}: {_what_to_do(code, args)}".rstrip(": ")
    prepared = sys.modules.get("impax.datasets.prepared")
    if (plan and isinstance(x, plan.Missing)) or (prepared and isinstance(x, prepared.NoDataset)):
      return EXIT_MISSING, str(x)
    if isinstance(x, FileNotFoundError):
      return EXIT_MISSING, f"{x.filename or where} does not exist ({x.strerror})"
  for x in _chain(e):
    if (match := _ERRNO_TEXT.search(str(x))) and int(match.group(1)) in _OS_ERRORS:
      code, what, _ = _OS_ERRORS[int(match.group(1))]
      path = match.group(2) or where
      return code, f"{what}: {path}: {_what_to_do(code, args)}"
    if _STORE_TEXT.search(f"{type(x).__name__}: {x}"):
      first = str(x).strip().splitlines()[0] if str(x).strip() else type(x).__name__
      return EXIT_STORE, (f"the object store for {where or 'this command'} refused or could not "
                          f"be reached ({type(x).__name__}: {first[:200]}): "
                          f"{_what_to_do(EXIT_STORE, args)}")
  for x in _chain(e):
    if isinstance(x, ValueError) or (plan and isinstance(x, plan.BuildError)):
      return EXIT_USAGE, str(x)
    if isinstance(x, RecursionError):  # a JSON input nested past Python's limit
      return EXIT_USAGE, (f"{getattr(args, 'input', None) or where}: nested too deeply to "
                          "parse (past Python's recursion limit)")
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  log = f"; Beam's log: {e.beam_log}" if getattr(e, "beam_log", None) else ""
  return EXIT_INTERNAL, (f"{type(e).__name__}: {text[:300]} (a fault of impax's, not of your "
                         f"input: run again with --verbose for the traceback, and report it{log})")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  beam_args = []
  if "--" in argv:
    at = argv.index("--")
    argv, beam_args = argv[:at], argv[at + 1:]
  parser = _Parser(
      prog="impax", description="Prepare multimodal training data and train IMP models on it.")
  parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
  sub = parser.add_subparsers(metavar="COMMAND", required=True)
  for add in (_build_parser, _inspect_parser, _card_parser, _verify_parser, _dedup_parser,
              _specs_parser, _demo_corpus_parser,
              _demo_parser, _engine_parser, _model_parser, _plan_parser, _train_parser):
    add(sub)
  for command in sub.choices.values():  # `impax COMMAND ... --verbose` as well
    if not any("--verbose" in a.option_strings for a in command._actions):
      command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="show the traceback of an error")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  # Beam warns about optional GCP client libraries on every import.
  logging.getLogger().handlers[0].addFilter(
      lambda record: not record.getMessage().startswith("apitools not found"))
  try:
    return args.func(args, beam_args) or 0
  except KeyboardInterrupt:
    print("impax: interrupted", file=sys.stderr)
    return 130
  except Exception as e:
    code, message = _error(e, args)
    if args.verbose:
      traceback.print_exc()
    print(f"impax: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
  sys.exit(main())
