"""The record layout: one serialized `tf.train.Example` per example.

FEATURES documents every key; metadata.json carries it so a reader needs no
impax code to parse the shards. Keys of a modality appear only when the
example has it.
"""

from impax.pipelines import example_proto
from impax.pipelines.media import Audio, VideoClip

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
}


def feature_spec() -> dict:
  return {key: {"dtype": dtype, "shape": shape, "description": text}
          for key, (dtype, shape, text) in FEATURES.items()}


def serialize(*, id_: str, source: str, video: VideoClip | None = None,
              audio: Audio | None = None, image: tuple[bytes, int, int] | None = None,
              captions: list[str] = (), tokens: list[list[int]] = (),
              labels: list[tuple[int, str]] = ()) -> bytes:
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
  for key in f:
    assert key in FEATURES, key
  return example_proto.make_example(f)
