"""Processing settings of a build: defaults, a config file, flags.

Precedence, lowest first: the defaults below, the spec's `settings`, a config
file (`--config FILE`, JSON or TOML, keys as the field names below), then
command-line flags (`--video-fps 4`). The resolved config is stored in
metadata.json with its hash; a build into an existing output must have the
same hash or be run with --overwrite.
"""

import dataclasses
import hashlib
import json
import math
import os
import re
import tomllib

from impax.datasets import files

# Bumped when the record layout or the processing changes what bytes a build
# writes; part of the config hash so old outputs are not resumed into.
# 2: a record's source is relative to the corpus root; 3: fingerprints; 4: a video's centre hash;
# 5: anamorphic video at its display aspect, the long side capped; an image shrunk over 2
# times decodes at a JPEG's DCT scale and resizes with reducing_gap (other resized bytes).
FORMAT_VERSION = 5

JPEG_MAX_SIDE = 65500  # libjpeg's largest width or height


def _field(default, help_):
  return dataclasses.field(default=default, metadata={"help": help_})


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  name: str = _field("", "dataset name used in shard file names (default: the output folder's name)")
  version: str = _field("1.0.0", "dataset version recorded in the metadata")
  # Video.
  video_fps: float = _field(8.0, "frames per second sampled from videos")
  video_max_frames: int = _field(128, "most frames stored per clip; longer clips are cut")
  video_short_side: int = _field(256, "frames are resized so their short side is this many pixels")
  jpeg_quality: int = _field(90, "JPEG quality of stored frames and images (1-95)")
  audio_track: str = _field("optional", "a video's audio track: optional, required or ignore")
  # Audio.
  audio_sample_rate: int = _field(16000, "audio is resampled to this rate (Hz), mono")
  audio_max_seconds: float = _field(30.0, "most seconds of audio stored per audio clip")
  # Images.
  image_short_side: int = _field(256, "images are resized so their short side is this many pixels; 0 keeps the size")
  # 8:1 at the default short side: only banners and spacers are wider, and a model
  # trained on crops of a few hundred pixels loses nothing when they shrink.
  max_long_side: int = _field(2048, "frames and images whose long side would be longer are shrunk "
                              "to this, keeping the aspect (so the short side is smaller); "
                              f"0: only JPEG's limit, {JPEG_MAX_SIDE}")
  # Text and labels.
  tokenizer: str = _field("", "SentencePiece .model to use; empty: train one on the corpus's text")
  vocab_size: int = _field(8000, "vocabulary size of a trained tokenizer (an upper bound on small corpora)")
  # BPE: SentencePiece's unigram trainer gives character-level vocabularies
  # on small corpora (a few thousand captions); BPE learns words on any size.
  tokenizer_type: str = _field("bpe", "SentencePiece model type of a trained tokenizer: bpe or unigram")
  labels_file: str = _field("", "text file with the label vocabulary, one per line; empty: built from the corpus")
  # Shards.
  num_shards: int = _field(0, "number of shards per split; 0: one per shard_size examples")
  shard_size: int = _field(1000, "examples per shard when num_shards is 0")
  group_size: int = _field(1, "ArrayRecord group size (1 lets Grain read records at random)")
  compression: str = _field("zstd:3", "ArrayRecord compression: uncompressed, zstd:N, brotli:N or snappy")
  # Duplicates.
  fingerprints: bool = _field(True, "store exact and perceptual fingerprints in every record (impax dedup reads them)")
  # Tools.
  ffmpeg_timeout: float = _field(300.0, "seconds before an ffmpeg call is killed")
  ffmpeg_threads: int = _field(1, "threads per ffmpeg call (parallelism comes from workers)")
  # Media from http(s) URLs (pipelines/download.py).
  download_connect_timeout: float = _field(10.0, "seconds a download may take to connect")
  download_read_timeout: float = _field(20.0, "seconds a download may wait for data")
  download_timeout: float = _field(300.0, "seconds one try of a download may take in all")
  download_retries: int = _field(3, "tries after the first for a 408, 429 or 5xx status, a "
                                 "timeout or a broken connection")
  download_backoff: float = _field(1.0, "seconds before the first retry, doubled for each "
                                   "next one, with jitter (a Retry-After header may ask more)")
  download_max_redirects: int = _field(10, "most redirects a download follows")
  download_per_host: int = _field(4, "most downloads from one host at once in each worker process")
  download_threads: int = _field(16, "downloads each worker runs at once, ahead of the examples "
                                 "that need them; 1: each as its example is processed")
  # Sizes a corpus's media have with room to spare (CC3M's images, WebVid's previews); a
  # larger body is more likely a mistake than an example.
  download_image_max_bytes: int = _field(32_000_000, "most bytes of a downloaded image")
  download_video_max_bytes: int = _field(1_000_000_000, "most bytes of a downloaded video")
  download_audio_max_bytes: int = _field(256_000_000, "most bytes of a downloaded audio file")
  user_agent: str = _field("", "a contact (an email or a URL) for the User-Agent header "
                           "`impax/VERSION (+CONTACT)` that sites see")
  opt_out: str = _field("noai,noimageai,noindex,noimageindex",
                        "X-Robots-Tag directives that refuse a download, comma-separated "
                        "(img2dataset's by default); empty: none")
  keep_originals: str = _field("", "a folder (local, gs://, s3://) that keeps every download "
                               "by its sha256; a rebuild takes a URL's body from there")

  def validate(self):
    """Raises ValueError naming the field and what to do."""
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config field {field.name}={value!r} must be a finite number")
    checks = [
        ("video_fps", self.video_fps > 0, "must be > 0"),
        ("video_max_frames", self.video_max_frames > 0, "must be > 0"),
        ("video_short_side", self.video_short_side > 0, "must be > 0"),
        ("jpeg_quality", 1 <= self.jpeg_quality <= 95, "must be between 1 and 95"),
        ("audio_track", self.audio_track in ("optional", "required", "ignore"),
         "must be optional, required or ignore"),
        ("audio_sample_rate", 1000 <= self.audio_sample_rate <= 384000, "must be between 1000 and 384000"),
        ("audio_max_seconds", self.audio_max_seconds > 0, "must be > 0"),
        ("image_short_side", self.image_short_side >= 0, "must be >= 0"),
        ("max_long_side", self.max_long_side == 0 or max(
            self.video_short_side, self.image_short_side) <= self.max_long_side <= JPEG_MAX_SIDE,
         f"must be 0 (JPEG's limit) or from the short sides "
         f"({max(self.video_short_side, self.image_short_side)}) up to {JPEG_MAX_SIDE}"),
        ("vocab_size", self.vocab_size >= 8, "must be >= 8"),
        ("tokenizer_type", self.tokenizer_type in ("unigram", "bpe"), "must be unigram or bpe"),
        ("num_shards", self.num_shards >= 0, "must be >= 0"),
        ("shard_size", self.shard_size > 0, "must be > 0"),
        ("group_size", self.group_size > 0, "must be > 0"),
        ("ffmpeg_timeout", self.ffmpeg_timeout > 0, "must be > 0"),
        ("ffmpeg_threads", self.ffmpeg_threads >= 0, "must be >= 0 (0: ffmpeg decides)"),
        ("download_connect_timeout", self.download_connect_timeout > 0, "must be > 0"),
        ("download_read_timeout", self.download_read_timeout > 0, "must be > 0"),
        ("download_timeout", self.download_timeout > 0, "must be > 0"),
        ("download_retries", self.download_retries >= 0, "must be >= 0"),
        ("download_backoff", self.download_backoff >= 0, "must be >= 0"),
        ("download_max_redirects", self.download_max_redirects >= 0, "must be >= 0"),
        ("download_per_host", self.download_per_host > 0, "must be > 0"),
        ("download_threads", self.download_threads > 0, "must be > 0"),
        ("download_image_max_bytes", self.download_image_max_bytes > 0, "must be > 0"),
        ("download_video_max_bytes", self.download_video_max_bytes > 0, "must be > 0"),
        ("download_audio_max_bytes", self.download_audio_max_bytes > 0, "must be > 0"),
        ("opt_out", all(re.fullmatch(r"[a-z0-9_-]+", d.strip()) for d in self.opt_out.split(",")
                        if d.strip()), "must be directives separated by commas, in lower case"),
    ]
    for field, ok, what in checks:
      if not ok:
        raise ValueError(f"config field {field}={getattr(self, field)!r} {what}")
    kind = self.compression.split(":")[0]
    if kind not in ("uncompressed", "zstd", "brotli", "snappy"):
      raise ValueError(f"config field compression={self.compression!r}: use uncompressed, "
                       "zstd:LEVEL, brotli:LEVEL or snappy")
    for field in ("tokenizer", "labels_file"):
      path = getattr(self, field)
      if path and "://" not in path and not os.path.isfile(path):
        raise ValueError(f"config field {field}: file {path} does not exist")
    return self

  def array_record_options(self) -> str:
    return f"group_size:{self.group_size},{self.compression}"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(BuildConfig)}
# Settings a split may choose for itself (a small test split wants fewer
# shards); they are not part of the dataset's config hash.
SPLIT_FIELDS = ("num_shards", "shard_size")
# Settings of how media are fetched, not of what a record holds: another timeout or
# contact resumes the same dataset. (The size limits and opt-out decide which URLs
# become examples, so they are hashed.)
FETCH_FIELDS = ("download_connect_timeout", "download_read_timeout", "download_timeout",
                "download_retries", "download_backoff", "download_max_redirects",
                "download_per_host", "download_threads", "user_agent", "keep_originals")


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


def resolve(*layers: dict) -> BuildConfig:
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
  return BuildConfig(**values).validate()


def file_sha256(path: str) -> str:
  return files.sha256(path)  # the format's, so the build and `impax verify` hash alike


def fingerprint(config: BuildConfig, spec_name: str) -> dict:
  """What determines a build's bytes besides its input: hashed into config_hash."""
  return {
      "format_version": FORMAT_VERSION,
      "spec": spec_name,
      "config": {k: v for k, v in config.to_dict().items()
                 if k not in SPLIT_FIELDS and k not in FETCH_FIELDS},
      # A given tokenizer or label file counts by content, not by path.
      "tokenizer_sha256": file_sha256(config.tokenizer) if config.tokenizer else None,
      "labels_sha256": file_sha256(config.labels_file) if config.labels_file else None,
  }


def config_hash(fp: dict) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
