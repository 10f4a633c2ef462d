"""Record bytes -> the arrays of one example at a bucket's shape: the loader's CPU decoder.

    reader = Reader(inputs=("video", "text"), text_length=16, augment=decode.Augment())
    reader.shapes(bucket, 8)              # {key: (shape, dtype)} of a batch of 8
    example = reader.example(record, bucket, rng)   # {key: array}, one example

A reader is a pure function of (record, bucket, generator): which record and
which generator are the sampler's (datasets/sampler.py). The per-modality
work (JPEG decoding, cropping, audio windows, log-mel, captions) is
datasets/decode.py's; a reader picks what the task's inputs need and makes
text from label names through the task's prompt where a record has no caption.
"""

import dataclasses
import functools

import numpy as np
import sentencepiece as spm

from impax.datasets import decode, modalities, records


@dataclasses.dataclass(frozen=True)
class Bucket:
  """One input shape of a task. Give the shapes of the modalities the task reads (the
  reader makes them); the weight and batch size are the loader's.

      impax.Bucket(video=(8, 64, 64))                      # batch size from the token budget
      impax.Bucket(image=(224, 224), batch_size=256, weight=2.0)
      impax.Bucket(video=(4, 32, 32), audio_seconds=0.64)  # a video-audio task's
  """
  video: tuple[int, int, int] | None = None  # frames, height, width
  image: tuple[int, int] | None = None  # height, width
  audio_seconds: float | None = None  # waveform / spectrogram window
  weight: float = 1.0  # relative frequency among the task's buckets
  batch_size: int | None = None  # global; default: from the token budget


def input_shapes(bucket: Bucket, inputs: tuple[str, ...], sample_rate: int = 16000
                 ) -> dict[str, tuple[int, ...]]:
  """Per-example shapes of the video, image and audio inputs of a bucket."""
  out = {}
  if "video" in inputs:
    out["video"] = (*bucket.video, 3)
  if "image" in inputs:
    out["image"] = (*bucket.image, 3)
  if "waveform" in inputs:
    out["waveform"] = (int(round(bucket.audio_seconds * sample_rate)),)
  if "spectrogram" in inputs:
    out["spectrogram"] = (decode.spectrogram_frames(bucket.audio_seconds), decode.MEL_BINS)
  return out


@dataclasses.dataclass(frozen=True)
class Reader:
  """Decodes a task's records; pickled to Grain's worker processes."""
  inputs: tuple[str, ...]  # what an example holds (modalities.INPUTS)
  augment: decode.Augment | None  # training augmentation; None: evaluation preprocessing
  text_length: int = 16
  prompt: str | None = None  # text from label names where a record has no caption
  multi_label: bool = False
  sample_rate: int = 16000
  clips: int = 1  # per video: 1 in training, the task's eval_clips in evaluation
  crops: int = 1  # per clip: 1 in training, the task's eval_crops in evaluation
  num_labels: int = 0
  tokenizer_path: str | None = None  # the dataset's, for prompts

  @functools.cached_property
  def _tokenizer(self):
    return spm.SentencePieceProcessor(model_file=self.tokenizer_path)

  def shapes(self, bucket: Bucket, n: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of a batch of `n` examples of the bucket."""
    inputs = self.inputs
    views = self.clips * self.crops
    clips = () if views == 1 else (views,)
    out = {}
    for key, shape in input_shapes(bucket, inputs, self.sample_rate).items():
      if key in modalities.VISION:
        out[key] = ((n, *(clips if key == "video" else ()), *shape), "uint8")
      else:
        out[key] = ((n, *shape), "float32")
    if "text" in inputs:
      out["text"] = ((n, self.text_length), "int32")
      out["text_mask"] = ((n, self.text_length), "int32")
    if "label" in inputs:
      out["label"] = ((n, self.num_labels), "float32") if self.multi_label else ((n,), "int32")
    out["valid"] = ((n,), "bool")
    return out

  def example(self, data: bytes, bucket: Bucket, rng: np.random.Generator) -> dict:
    """{key: array} of one record at the bucket's shape, and its "id" (a str); a DecodeError
    (or another error) for a record it cannot decode."""
    record = decode.parse(data)
    try:
      return {**self._example(record, bucket, rng), "id": record.id}
    except records.RecordError as e:  # a field the inputs need is missing or inconsistent
      raise decode.DecodeError(str(e)) from None

  def _example(self, record: records.Record, bucket: Bucket, rng: np.random.Generator) -> dict:
    inputs, augment = self.inputs, self.augment
    out, audio_start = {}, None
    if "video" in inputs:
      out["video"], starts = decode.video(record.require("video"), *bucket.video, augment, rng,
                                          clips=self.clips, crops=self.crops)
      audio_start = starts[0] if len(starts) == 1 else None
    if "image" in inputs:
      out["image"] = decode.image(record.require("image"), *bucket.image, augment, rng)
    if {"waveform", "spectrogram"} & set(inputs):
      wave = decode.waveform(record.require("audio"), bucket.audio_seconds, augment, rng,
                             start_seconds=audio_start, sample_rate=self.sample_rate)
      if "waveform" in inputs:
        out["waveform"] = wave
      if "spectrogram" in inputs:
        out["spectrogram"] = decode.log_mel(wave, self.sample_rate)
    if "text" in inputs:
      out["text"], out["text_mask"] = decode.pad_tokens(self._text(record, rng),
                                                        self.text_length)
    if "label" in inputs:
      out["label"] = decode.label(record.require("label_indices"), self.num_labels,
                                  self.multi_label)
    return out

  def _text(self, record: records.Record, rng: np.random.Generator) -> list[int]:
    options = record.caption_tokens if record.token_lengths else []
    if not options and self.prompt:
      options = [self._tokenizer.encode(self.prompt.format(label=n)) for n in record.label_names]
    if not options:
      raise decode.DecodeError("record has no captions and no labels to prompt")
    return options[int(rng.integers(len(options)))] if self.augment is not None else options[0]
