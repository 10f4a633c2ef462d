"""`tf.train.Example` message classes without importing TensorFlow.

Workers that only write records should not pay TensorFlow's import time and
memory (seconds and hundreds of MiB per process). The wire format is that of
tensorflow/core/example/{feature,example}.proto, so TensorFlow, tf.data and
any other protobuf reader parse these records as `tf.train.Example`.
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
