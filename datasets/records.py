"""The record contract: one serialized `tf.train.Example` per example, written and read here.

FEATURES names every key with its dtype and shape; metadata.json carries it,
so a reader needs no impax code to parse the shards. Keys of a modality
appear only when the example has it. The build writes records with
`serialize`; every impax reader reads them through the typed view `Record`:

    record = records.Record.parse(data)
    record.id, record.video.frames, record.audio.waveform(), record.caption_tokens

so the keys below are spelled in this file alone.

The message classes are built from the wire format of
tensorflow/core/example/{feature,example}.proto without importing TensorFlow:
workers that only write records should not pay its import time and memory
(seconds and hundreds of MiB per process). TensorFlow, tf.data and any other
protobuf reader parse these records as `tf.train.Example`.
"""

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
  f = descriptor_pb2.FileDescriptorProto(
      name="impax/tensorflow_example.proto", package="tensorflow", syntax="proto3")

  def message(name, fields, oneof=None):
    m = f.message_type.add(name=name)
    if oneof:
      m.oneof_decl.add(name=oneof)
    for number, (field_name, type_, label, type_name, packed) in enumerate(fields, 1):
      field = m.field.add(name=field_name, number=number, type=type_, label=label)
      if type_name:
        field.type_name = type_name
      if packed:
        field.options.packed = True
      if oneof:
        field.oneof_index = 0
    return m

  rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
  message("BytesList", [("value", _F.TYPE_BYTES, rep, None, False)])
  message("FloatList", [("value", _F.TYPE_FLOAT, rep, None, True)])
  message("Int64List", [("value", _F.TYPE_INT64, rep, None, True)])
  message("Feature", [
      ("bytes_list", _F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", False),
      ("float_list", _F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", False),
      ("int64_list", _F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", False),
  ], oneof="kind")
  features = message("Features", [
      ("feature", _F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", False)])
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
  entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt,
                  type_name=".tensorflow.Feature")
  message("Example", [("features", _F.TYPE_MESSAGE, opt, ".tensorflow.Features", False)])
  return f


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
Example = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tensorflow.Example"))


FEATURES = {
    "id": ("bytes", "scalar", "example id, unique in the split"),
    "source": ("bytes", "scalar", "the media path the example was built from, relative to the corpus root"),
    "video/frames": ("bytes", "list", "one JPEG per frame, in time order"),
    "video/fps": ("float", "scalar", "frames per second of the stored frames"),
    "video/num_frames": ("int64", "scalar", "number of stored frames"),
    "video/height": ("int64", "scalar", "frame height in pixels"),
    "video/width": ("int64", "scalar", "frame width in pixels"),
    "audio/pcm_s16le": ("bytes", "scalar", "mono 16-bit little-endian PCM samples"),
    "audio/sample_rate": ("int64", "scalar", "samples per second"),
    "audio/num_samples": ("int64", "scalar", "number of samples"),
    "image/encoded": ("bytes", "scalar", "JPEG, RGB"),
    "image/height": ("int64", "scalar", "image height in pixels"),
    "image/width": ("int64", "scalar", "image width in pixels"),
    "text/string": ("bytes", "list", "normalized captions, UTF-8, one per caption"),
    "text/tokens": ("int64", "list", "SentencePiece ids of all captions, concatenated"),
    "text/lengths": ("int64", "list", "number of tokens of each caption"),
    "label/index": ("int64", "list", "indices into the split's label vocabulary"),
    "label/name": ("bytes", "list", "label names, UTF-8"),
    # Written when the build's `fingerprints` option is on (the default); `impax dedup` reads them.
    "fingerprint/sha256": ("bytes", "scalar", "sha256 (hex) of the media files read and the clip's bounds"),
    "fingerprint/video": ("int64", "list", "64-bit DCT hashes of the mean of a few frames and of its centre 95% (as signed int64)"),
    "fingerprint/image": ("int64", "list", "64-bit DCT hashes of the image and of its centre 95% (as signed int64)"),
    "fingerprint/audio": ("int64", "list", "one 64-bit value per 32 ms: the mel bands within 20 dB of the frame's loudest (as signed int64)"),
}


def make_example(features: dict) -> bytes:
  """Serializes {key: list of bytes | list of float | list of int} deterministically.

  The value type picks the list kind: bytes -> BytesList, float -> FloatList,
  int -> Int64List. Serialization sorts the map's keys, so equal inputs give
  equal bytes (protobuf map order is otherwise unspecified).
  """
  example = Example()
  for key, values in features.items():
    feature = example.features.feature[key]
    kind = _kind(key, values)
    getattr(feature, kind).value.extend(values)
  return example.SerializeToString(deterministic=True)


def _kind(key, values) -> str:
  if not values:
    raise ValueError(f"feature {key!r} is empty; leave it out instead")
  first = values[0]
  if isinstance(first, bytes):
    return "bytes_list"
  if isinstance(first, float):
    return "float_list"
  if isinstance(first, int):
    return "int64_list"
  raise TypeError(f"feature {key!r}: unsupported value type {type(first).__name__}")


def parse_example(data: bytes) -> dict:
  """Parses a serialized Example into {key: list of values}."""
  example = Example.FromString(data)
  out = {}
  for key, feature in example.features.feature.items():
    kind = feature.WhichOneof("kind")
    out[key] = list(getattr(feature, kind).value) if kind else []
  return out


def feature_spec() -> dict:
  return {key: {"dtype": dtype, "shape": shape, "description": text}
          for key, (dtype, shape, text) in FEATURES.items()}


def serialize(*, id_: str, source: str, video=None, audio=None,
              image: tuple[bytes, int, int] | None = None,
              captions: list[str] = (), tokens: list[list[int]] = (),
              labels: list[tuple[int, str]] = (), fingerprints: dict | None = None) -> bytes:
  """One example's record. `video` has .frames (JPEGs), .fps, .height, .width;
  `audio` has .pcm_s16le, .sample_rate, .num_samples; `image` is (JPEG, height, width);
  `fingerprints` is {"sha256": hex str, "video"|"image"|"audio": list of signed 64-bit ints}."""
  f = {"id": [id_.encode()], "source": [source.encode()]}
  if video is not None:
    f["video/frames"] = video.frames
    f["video/fps"] = [float(video.fps)]
    f["video/num_frames"] = [len(video.frames)]
    f["video/height"] = [video.height]
    f["video/width"] = [video.width]
  if audio is not None:
    f["audio/pcm_s16le"] = [audio.pcm_s16le]
    f["audio/sample_rate"] = [audio.sample_rate]
    f["audio/num_samples"] = [audio.num_samples]
  if image is not None:
    f["image/encoded"] = [image[0]]
    f["image/height"] = [image[1]]
    f["image/width"] = [image[2]]
  if captions:
    f["text/string"] = [c.encode() for c in captions]
    f["text/lengths"] = [len(t) for t in tokens]
    if flat := [i for t in tokens for i in t]:
      f["text/tokens"] = flat
  if labels:
    f["label/index"] = [i for i, _ in labels]
    f["label/name"] = [n.encode() for _, n in labels]
  for kind, value in (fingerprints or {}).items():
    f[f"fingerprint/{kind}"] = [value.encode()] if isinstance(value, str) else list(value)
  for key in f:
    assert key in FEATURES, key
  return make_example(f)


# -- the read view ----------------------------------------------------------------


class RecordError(ValueError):
  """A record that lacks a field its reader needs, or whose fields do not agree."""


@dataclasses.dataclass(frozen=True)
class Video:
  frames: Sequence[bytes]  # one JPEG per frame, in time order
  fps: float
  height: int  # of every frame, in pixels
  width: int

  @property
  def num_frames(self) -> int:
    return len(self.frames)

  @property
  def shape(self) -> tuple[int, int]:
    return self.height, self.width

  @property
  def seconds(self) -> float:
    return len(self.frames) / self.fps if self.fps else 0.0


@dataclasses.dataclass(frozen=True)
class Audio:
  pcm_s16le: bytes  # mono 16-bit little-endian samples
  sample_rate: int

  @property
  def num_samples(self) -> int:
    return len(self.pcm_s16le) // 2

  @property
  def seconds(self) -> float:
    return self.num_samples / self.sample_rate if self.sample_rate else 0.0

  def samples(self) -> np.ndarray:
    """int16 [num_samples]."""
    if len(self.pcm_s16le) % 2:
      raise RecordError("audio/pcm_s16le has an odd number of bytes")
    return np.frombuffer(self.pcm_s16le, "<i2")

  def waveform(self) -> np.ndarray:
    """float32 [num_samples] in [-1, 1)."""
    return self.samples().astype(np.float32) / 32768


@dataclasses.dataclass(frozen=True)
class Image:
  encoded: bytes  # JPEG, RGB
  height: int
  width: int

  @property
  def shape(self) -> tuple[int, int]:
    return self.height, self.width


@dataclasses.dataclass(frozen=True)
class Fingerprints:
  """What `impax dedup` compares (the build's `fingerprints` option)."""
  sha256: str  # hex, of the media read and the clip's bounds
  video: Sequence[int] = ()  # signed 64-bit perceptual hashes; empty: not this kind
  image: Sequence[int] = ()
  audio: Sequence[int] = ()


_PRESENT_BY = {"video": "video/frames", "audio": "audio/pcm_s16le", "image": "image/encoded",
               "label_indices": "label/index"}


@dataclasses.dataclass(frozen=True)
class Record:
  """One record read by field: the typed view of the contract, for every reader.

      record = records.Record.parse(data)
      record.id, record.video.frames, record.audio.waveform(), record.caption_tokens

  A medium the record lacks is None (`video`, `audio`, `image`), an annotation it
  lacks is empty; `require` names the missing field instead. Text is UTF-8 decoded
  (an undecodable byte becomes U+FFFD). Fields are read when first used.
  """
  features: Mapping[str, list]  # {key: values}, as parse_example gives them

  @classmethod
  def parse(cls, data: bytes) -> "Record":
    """Raises protobuf's DecodeError (or another error) for bytes that are not an Example."""
    return cls(parse_example(data))

  def _one(self, key: str):
    values = self.features.get(key)
    if not values:
      raise RecordError(f"record has no {key!r}")
    return values[0]

  def _texts(self, key: str) -> tuple[str, ...]:
    return tuple(v.decode("utf-8", "replace") for v in self.features.get(key) or ())

  @property
  def id(self) -> str:
    return self._one("id").decode("utf-8", "replace")

  @property
  def source(self) -> str:
    """The media path it was built from, relative to the corpus root ("" if unrecorded)."""
    texts = self._texts("source")
    return texts[0] if texts else ""

  @functools.cached_property
  def video(self) -> Video | None:
    frames = self.features.get("video/frames")
    if not frames:
      return None
    return Video(frames, float(self._one("video/fps")), int(self._one("video/height")),
                 int(self._one("video/width")))

  @functools.cached_property
  def audio(self) -> Audio | None:
    pcm = self.features.get("audio/pcm_s16le")
    if not pcm:
      return None
    return Audio(pcm[0], int(self._one("audio/sample_rate")))

  @functools.cached_property
  def image(self) -> Image | None:
    encoded = self.features.get("image/encoded")
    if not encoded:
      return None
    return Image(encoded[0], int(self._one("image/height")), int(self._one("image/width")))

  @property
  def captions(self) -> tuple[str, ...]:
    return self._texts("text/string")

  @property
  def tokens(self) -> Sequence[int]:
    """SentencePiece ids of all captions, concatenated."""
    return self.features.get("text/tokens") or []

  @property
  def token_lengths(self) -> Sequence[int]:
    """Tokens of each caption."""
    return self.features.get("text/lengths") or []

  @property
  def caption_tokens(self) -> list[list[int]]:
    """Token ids of each caption; [] for a record without captions."""
    tokens, lengths = self.tokens, self.token_lengths
    if sum(lengths) != len(tokens):
      raise RecordError(f"text/lengths sum to {sum(lengths)} but text/tokens holds {len(tokens)}")
    out, pos = [], 0
    for n in lengths:
      out.append(list(tokens[pos:pos + n]))
      pos += n
    return out

  @property
  def label_indices(self) -> Sequence[int]:
    """Indices into the split's label vocabulary (metadata.json's labels)."""
    return self.features.get("label/index") or []

  @property
  def label_names(self) -> tuple[str, ...]:
    return self._texts("label/name")

  @functools.cached_property
  def fingerprints(self) -> Fingerprints | None:
    """None for a record built with fingerprints off."""
    if not self.features.get("fingerprint/sha256"):
      return None
    return Fingerprints(self._one("fingerprint/sha256").decode(),
                        *(self.features.get(f"fingerprint/{kind}") or ()
                          for kind in ("video", "image", "audio")))

  def require(self, field: str):
    """The field (video, audio, image or label_indices), or a RecordError naming its key."""
    value = getattr(self, field)
    if not value:
      raise RecordError(f"record has no {_PRESENT_BY[field]!r}")
    return value

  def describe(self) -> dict:
    """Every feature by key, media as their sizes, text decoded: what `impax inspect` prints."""
    out = {}
    for key, values in sorted(self.features.items()):
      if key == "video/frames":
        out[key] = f"{len(values)} JPEG frames, {sum(map(len, values))} bytes"
      elif key in ("audio/pcm_s16le", "image/encoded"):
        out[key] = f"{len(values[0])} bytes"
      elif values and isinstance(values[0], bytes):
        out[key] = [v.decode("utf-8", "replace") for v in values]
      else:
        out[key] = values if len(values) != 1 else values[0]
    return out


_KINDS = {bytes: "bytes", float: "float", int: "int64"}


def problem(data: bytes, spec: Mapping[str, Mapping[str, str]]) -> str | None:
  """Why a serialized record does not fit a feature spec (metadata.json's `features`,
  feature_spec()), or None when it does: `impax verify --deep` asks of every record."""
  try:
    parsed = parse_example(data)
  except Exception as e:  # protobuf's DecodeError, or a message that is not an Example
    return f"not a tf.train.Example ({type(e).__name__}: {e})"
  if not parsed.get("id"):
    return "it has no 'id'"
  for key, values in sorted(parsed.items()):
    declared = spec.get(key)
    if declared is None:
      return f"key {key!r} is not in the feature spec"
    if not values:
      return f"{key!r} is empty"
    kind = _KINDS.get(type(values[0]))
    if kind != declared["dtype"]:
      return f"{key!r} holds {kind} values, the feature spec says {declared['dtype']}"
    if declared["shape"] == "scalar" and len(values) != 1:
      return f"{key!r} holds {len(values)} values, the feature spec says a scalar"
  stored = {"video/num_frames": len(parsed.get("video/frames", ())),
            "audio/num_samples": len(parsed.get("audio/pcm_s16le", [b""])[0]) // 2}
  for key, count in stored.items():
    if key in parsed and parsed[key][0] != count:
      return f"{key!r} says {parsed[key][0]}, the record holds {count}"
  return None
