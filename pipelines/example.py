"""Step 5 of the build for one example: its text, its media, its statistics, its record.

`process_entry` gives a `Processed` (and the serialized record) or a `Failure`
naming the stage that failed; one bad example never stops the build. Both go
to JSON (`to_json`) in the build's temporary files and come back with
`result_from_json` when a killed build is resumed.
"""

import contextlib
import dataclasses
import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from impax.datasets import metadata, records, registry
from impax.pipelines import config as config_lib
from impax.pipelines import download, media, stats, storage, text


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclasses.dataclass(frozen=True)
class Failure:
  """An example that was not written, and why."""
  index: int
  id: str
  source: str  # where it was read, e.g. "train.jsonl:12"
  stage: str  # what failed: manifest, duplicate, text, label, read, download, video, audio, image
  error: str
  media: Mapping[str, str]

  @classmethod
  def of(cls, entry: registry.Entry | registry.BadEntry, stage: str, error: str) -> "Failure":
    media_ = dict(entry.media) if isinstance(entry, registry.Entry) else {}
    # Without object addresses (`<_io.BytesIO object at 0x7f...>`): the same failure
    # reads the same for every input, so reports group it.
    return cls(entry.index, entry.id, entry.source, stage, _ADDRESS.sub("", error), media_)

  def to_json(self) -> dict:
    return {"index": self.index, "id": self.id, "source": self.source, "stage": self.stage,
            "error": self.error, "media": dict(self.media)}

  @classmethod
  def from_json(cls, obj: Mapping) -> "Failure":
    return cls(obj["index"], obj["id"], obj["source"], obj["stage"], obj["error"], obj["media"])

  def line(self) -> str:
    """Its line in failures-<split>.jsonl: what a user needs to find and fix the input."""
    return json.dumps({"source": self.source, "id": self.id, "stage": self.stage,
                       "error": self.error, "media": dict(self.media)}, ensure_ascii=False)


@dataclasses.dataclass(frozen=True)
class Processed:
  """An example whose record was written; what its shard's sidecar sums up."""
  index: int
  id: str
  source: str
  media_sha256: Mapping[str, str]  # {medium: sha256 of the file read}
  stats: Mapping[str, Any]  # in stats.py's mergeable form
  composition: metadata.Composition  # counts of one example: 0 or 1 each

  def to_json(self) -> dict:
    return {"index": self.index, "id": self.id, "source": self.source,
            "media_sha256": dict(self.media_sha256), "stats": self.stats,
            "composition": dataclasses.asdict(self.composition)}

  @classmethod
  def from_json(cls, obj: Mapping) -> "Processed":
    return cls(obj["index"], obj["id"], obj["source"], obj["media_sha256"], obj["stats"],
               metadata.Composition(**obj["composition"]))


def result_from_json(obj: Mapping) -> Processed | Failure:
  return Failure.from_json(obj) if "error" in obj else Processed.from_json(obj)


def process_entry(entry: registry.Entry, config: config_lib.BuildConfig, tokenizer_model: bytes,
                  label_index: dict[str, int], media_base: str = ""
                  ) -> tuple[Processed | Failure, bytes | None]:
  """Decodes, tokenizes and serializes one example: (result, record or None)."""
  stage = "text"
  decoded, shas = {}, {}
  try:
    captions, tokens = tokenize(entry.captions, tokenizer_model)
    stage = "label"
    labels = map_labels(entry.labels, label_index)
    with contextlib.ExitStack() as stack:
      for medium in sorted(entry.media):
        path = entry.media[medium]
        stage = "download" if download.is_url(path) else "read"
        try:
          body, shas[medium] = stack.enter_context(
              download.local_copy(path, medium, config) if stage == "download"
              else storage.media_body(path, medium))
        except OSError as e:
          raise media.MediaError(f"cannot read {path}: {e.strerror or e}") from None
        stage = medium
        decoded[medium] = decode(medium, body, path, entry, config)
  except (media.MediaError, text.TextError, download.DownloadError) as e:
    return Failure.of(entry, stage, str(e)), None
  except Exception as e:  # one bad example never stops the build
    return Failure.of(entry, stage, f"{type(e).__name__}: {e}"), None

  video, audio, image = (decoded.get(m) for m in ("video", "audio", "image"))
  track = audio or (video.audio if video else None)
  primary = next(entry.media[m] for m in ("video", "image", "audio") if m in entry.media)
  prints = fingerprints(entry, shas, video, track, image) if config.fingerprints else None
  record = records.serialize(id_=entry.id, source=relative_source(primary, media_base),
                             video=video, audio=track, image=image, captions=captions,
                             tokens=tokens, labels=labels, fingerprints=prints)
  composition = metadata.Composition(
      examples=1, video=int(video is not None),
      video_with_audio=int(video is not None and track is not None),
      audio=int(audio is not None), image=int(image is not None),
      captions=int(bool(captions)), labels=int(bool(labels)), multi_label=int(len(labels) > 1))
  result = Processed(entry.index, entry.id, entry.source, shas,
                     example_stats(video, track, image, tokens, captions, labels, len(record)),
                     composition)
  return result, record


# -- text (pipelines/text.py) -------------------------------------------------


def tokenize(captions: tuple[str, ...], tokenizer_model: bytes) -> tuple[list[str], list[list[int]]]:
  """The normalized captions and their token ids; raises TextError."""
  captions = [text.normalize(c) for c in captions]
  tokens = [text.tokenizer(tokenizer_model).encode(c) for c in captions] if captions else []
  return captions, tokens


def map_labels(names: tuple[str, ...], label_index: dict[str, int]) -> list[tuple[int, str]]:
  """(index, normalized name) of each label; raises TextError for a label outside the vocabulary."""
  labels = []
  for name in names:
    name = text.normalize(name)
    if name not in label_index:
      raise text.TextError(f"label {name!r} is not in the label vocabulary (set by --labels-file "
                           "or by the split built first into this output)")
    labels.append((label_index[name], name))
  return labels


# -- media (pipelines/media.py) -----------------------------------------------


def decode(medium: str, body: bytes | str, path: str, entry: registry.Entry,
           config: config_lib.BuildConfig):
  """One medium of the entry from its body (storage.media_body's or download.local_copy's): a
  VideoClip, an Audio or (JPEG, height, width).

  Errors name the entry's path, not a local copy's.
  """
  try:
    if medium == "video":
      return media.decode_video(
          body, start=entry.start, end=entry.end, fps=config.video_fps,
          max_frames=config.video_max_frames, short_side=config.video_short_side,
          jpeg_quality=config.jpeg_quality,
          audio_track="ignore" if "audio" in entry.media else config.audio_track,
          sample_rate=config.audio_sample_rate, timeout=config.ffmpeg_timeout,
          threads=config.ffmpeg_threads, max_long_side=config.max_long_side)
    if medium == "audio":
      return media.decode_audio(
          body, start=entry.start, end=entry.end, sample_rate=config.audio_sample_rate,
          max_seconds=config.audio_max_seconds, timeout=config.ffmpeg_timeout,
          threads=config.ffmpeg_threads)
    return media.process_image(body, short_side=config.image_short_side,
                               jpeg_quality=config.jpeg_quality,
                               max_long_side=config.max_long_side,
                               resize_filter=config.image_resize_filter, name=path)
  except media.MediaError as e:
    if medium == "image":  # process_image names the path itself
      raise
    raise media.MediaError(str(e).replace(body, path)) from None


def fingerprints(entry: registry.Entry, shas: Mapping[str, str], video: media.VideoClip | None,
                 track: media.Audio | None, image: tuple[bytes, int, int] | None) -> dict:
  """The record's fingerprints (records.FEATURES "fingerprint/..."): the sha256 of the
  media read (storage.media_body or download.local_copy hashed them) and the clip's bounds,
  and the perceptual fingerprint of each stored medium (a list of int64: two hashes, or one
  per frame of sound)."""
  exact = json.dumps({"media": dict(shas), "start": entry.start, "end": entry.end}, sort_keys=True)
  out = {"sha256": hashlib.sha256(exact.encode()).hexdigest()}
  perceptual = (("video", media.video_fingerprint, video and video.frames),
                ("image", media.image_fingerprint, image and image[0]),
                ("audio", media.audio_fingerprint, track if track and track.num_samples else None))
  for kind, fingerprint, data in perceptual:
    if data:
      with contextlib.suppress(Exception):  # a record is never lost to its fingerprint
        value = fingerprint(data)
        if value != []:  # silence has no audio fingerprint
          out[kind] = value if isinstance(value, list) else [value]
  return out


def relative_source(path: str, base: str) -> str:
  """A media path relative to the corpus root `base`; as given when outside it."""
  base = base.rstrip("/")
  if base and path.startswith(base + "/"):
    return posixpath.normpath(path[len(base) + 1:])
  return path


# -- statistics (pipelines/stats.py) ------------------------------------------


def example_stats(video: media.VideoClip | None, track: media.Audio | None,
                  image: tuple[bytes, int, int] | None, tokens: list[list[int]],
                  captions: list[str], labels: list[tuple[int, str]], record_bytes: int) -> dict:
  """One example's statistics; the shards and the split merge them (stats.merge)."""
  s = {}
  if video:
    stats.add_number(s, "video/seconds", len(video.frames) / video.fps)
    stats.add_number(s, "video/num_frames", len(video.frames))
    stats.add_number(s, "video/fps", video.fps)
    stats.add_category(s, "video/resolution", f"{video.height}x{video.width}")
    if video.source_duration is not None:
      stats.add_number(s, "video/source_seconds", video.source_duration)
  if track:
    stats.add_number(s, "audio/seconds", track.num_samples / track.sample_rate)
  if image:
    stats.add_category(s, "image/resolution", f"{image[1]}x{image[2]}")
  for t in tokens:
    stats.add_number(s, "text/tokens_per_caption", len(t))
  if captions:
    stats.add_number(s, "text/captions_per_example", len(captions))
  if labels:
    stats.add_number(s, "label/labels_per_example", len(labels))
  stats.add_number(s, "record/bytes", record_bytes)
  return s
