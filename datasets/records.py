"""The record contract: one serialized `tf.train.Example` per example, written and read here.

FEATURES names every key with its dtype and shape; metadata.json carries it,
so a reader needs no impax code to parse the shards. Keys of a modality
appear only when the example has it. The build writes records with
`serialize`; readers parse them with `parse_example`.

The message classes are built from the wire format of
tensorflow/core/example/{feature,example}.proto without importing TensorFlow:
workers that only write records should not pay its import time and memory
(seconds and hundreds of MiB per process). TensorFlow, tf.data and any other
protobuf reader parse these records as `tf.train.Example`.
"""

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

