"""Processing settings of a build: layered, checked and hashed.

The settings themselves (names, types, defaults, help) are the format's:
BuildConfig in datasets/build_settings.py, what metadata.json's `config` reads
back as. Precedence, lowest first: their defaults, the spec's `settings`, a
config file (`--config FILE`, JSON or TOML, keys as the field names), then the
options given (`impax build --video-fps 4`, build_dataset's `options`); `layers`
gives the last two, in the one order the CLI and the build flow both use, and
`resolve` merges them over the spec's. The resolved config is stored in
metadata.json with its hash; a build into an existing output must have the same
hash or be run with --overwrite.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from impax.datasets import files

# The format's, re-exported: the build and its users take them from here.
from impax.datasets.build_settings import JPEG_MAX_SIDE, SPLIT_FIELDS, BuildConfig

# Bumped when the record layout or the processing changes what bytes a build
# writes; part of the config hash so old outputs are not resumed into.
# 2: a record's source is relative to the corpus root; 3: fingerprints; 4: a video's centre hash;
# 5: anamorphic video at its display aspect, the long side capped; an image shrunk over 2
# times decodes at a JPEG's DCT scale and resizes with reducing_gap (other resized bytes).
FORMAT_VERSION = 5

FIELDS = {f.name: f for f in dataclasses.fields(BuildConfig)}


def validate(config: BuildConfig) -> BuildConfig:
  """Raises ValueError naming the field and what to do."""
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"config field {field.name}={value!r} must be a finite number")
  checks = [
      ("video_fps", config.video_fps > 0, "must be > 0"),
      ("video_max_frames", config.video_max_frames > 0, "must be > 0"),
      ("video_short_side", config.video_short_side > 0, "must be > 0"),
      ("jpeg_quality", 1 <= config.jpeg_quality <= 95, "must be between 1 and 95"),
      ("audio_track", config.audio_track in ("optional", "required", "ignore"),
       "must be optional, required or ignore"),
      ("audio_sample_rate", 1000 <= config.audio_sample_rate <= 384000, "must be between 1000 and 384000"),
      ("audio_max_seconds", config.audio_max_seconds > 0, "must be > 0"),
      ("image_short_side", config.image_short_side >= 0, "must be >= 0"),
      ("image_resize_filter", config.image_resize_filter in ("lanczos", "area"),
       "must be lanczos or area"),
      ("max_long_side", config.max_long_side == 0 or max(
          config.video_short_side, config.image_short_side) <= config.max_long_side <= JPEG_MAX_SIDE,
       f"must be 0 (JPEG's limit) or from the short sides "
       f"({max(config.video_short_side, config.image_short_side)}) up to {JPEG_MAX_SIDE}"),
      ("vocab_size", config.vocab_size >= 8, "must be >= 8"),
      ("tokenizer_type", config.tokenizer_type in ("unigram", "bpe"), "must be unigram or bpe"),
      ("num_shards", config.num_shards >= 0, "must be >= 0"),
      ("shard_size", config.shard_size > 0, "must be > 0"),
      ("group_size", config.group_size > 0, "must be > 0"),
      ("ffmpeg_timeout", config.ffmpeg_timeout > 0, "must be > 0"),
      ("ffmpeg_threads", config.ffmpeg_threads >= 0, "must be >= 0 (0: ffmpeg decides)"),
      ("download_connect_timeout", config.download_connect_timeout > 0, "must be > 0"),
      ("download_read_timeout", config.download_read_timeout > 0, "must be > 0"),
      ("download_timeout", config.download_timeout > 0, "must be > 0"),
      ("download_retries", config.download_retries >= 0, "must be >= 0"),
      ("download_backoff", config.download_backoff >= 0, "must be >= 0"),
      ("download_max_redirects", config.download_max_redirects >= 0, "must be >= 0"),
      ("download_per_host", config.download_per_host > 0, "must be > 0"),
      ("download_threads", config.download_threads > 0, "must be > 0"),
      ("download_image_max_bytes", config.download_image_max_bytes > 0, "must be > 0"),
      ("download_video_max_bytes", config.download_video_max_bytes > 0, "must be > 0"),
      ("download_audio_max_bytes", config.download_audio_max_bytes > 0, "must be > 0"),
      ("opt_out", all(re.fullmatch(r"[a-z0-9_-]+", d.strip()) for d in config.opt_out.split(",")
                      if d.strip()), "must be directives separated by commas, in lower case"),
  ]
  for field, ok, what in checks:
    if not ok:
      raise ValueError(f"config field {field}={getattr(config, field)!r} {what}")
  kind = config.compression.split(":")[0]
  if kind not in ("uncompressed", "zstd", "brotli", "snappy"):
    raise ValueError(f"config field compression={config.compression!r}: use uncompressed, "
                     "zstd:LEVEL, brotli:LEVEL or snappy")
  for field in ("tokenizer", "labels_file"):
    path = getattr(config, field)
    if path and "://" not in path and not os.path.isfile(path):
      raise ValueError(f"config field {field}: file {path} does not exist")
  return config


def read_config_file(path: str) -> dict:
  """Settings from a JSON or TOML file; unknown keys are an error."""
  try:
    with open(path, "rb") as f:
      data = tomllib.load(f) if path.endswith(".toml") else json.load(f)
  except FileNotFoundError:
    raise ValueError(f"config file {path} does not exist") from None
  except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"config file {path} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"config file {path} must hold an object of settings")
  unknown = sorted(set(data) - set(FIELDS))
  if unknown:
    raise ValueError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
                     f"known: {', '.join(FIELDS)}")
  return data


def layers(config_file: str | None = None,
           options: Mapping[str, Any] | None = None) -> tuple[dict, ...]:
  """A build's settings above its spec's, lowest first: the config file's, then the options
  given (an option that is None is not given). What `impax build` and the build_dataset
  flow pass to build.prepare, which resolves them over the defaults and the spec's."""
  given = {key: value for key, value in (options or {}).items() if value is not None}
  return (*([read_config_file(config_file)] if config_file else []), given)


def resolve(*layers: Mapping[str, Any]) -> BuildConfig:
  """Merges settings layers (later wins) over the defaults, with type checks."""
  values = {}
  for layer in layers:
    for key, value in layer.items():
      if key not in FIELDS:
        raise ValueError(f"unknown setting {key!r}")
      default = FIELDS[key].default
      if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      if type(value) is not type(default):
        raise ValueError(f"setting {key} must be a {type(default).__name__}, got {value!r}")
      values[key] = value
  return validate(BuildConfig(**values))


def file_sha256(path: str) -> str:
  return files.sha256(path)  # the format's, so the build and `impax verify` hash alike


def fingerprint(config: BuildConfig, spec_name: str) -> dict:
  """What determines a build's bytes besides its input: hashed into config_hash."""
  return {
      "format_version": FORMAT_VERSION,
      "spec": spec_name,
      "config": config.stored(),
      # A given tokenizer or label file counts by content, not by path.
      "tokenizer_sha256": file_sha256(config.tokenizer) if config.tokenizer else None,
      "labels_sha256": file_sha256(config.labels_file) if config.labels_file else None,
  }


def config_hash(fp: dict) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
