"""Per-example decoding and preprocessing: a record's media in, fixed-shape arrays out.

Each function takes a part of a record's typed view (records.Record: its video,
image, audio, label indices) and is a pure function of (that part, target
shape, random generator), so the loader's determinism is that of the generator
it passes in. Outputs:

  video        uint8 [frames, height, width, 3] (eval with views > 1: [views, frames, h, w, 3])
  image        uint8 [height, width, 3]
  waveform     float32 [samples], in [-1, 1]
  spectrogram  float32 [time_frames, mel_bins], log-mel (IMP: 128 bins, 80-7600 Hz)
  text         int32 [length] token ids, pad 0; text_mask int32 [length]
  label        int32 index (single-label) or float32 [num_labels] multi-hot

Vision stays uint8 until it reaches the accelerator: a quarter of the bytes
through the worker queues. JPEGs are decoded by libjpeg-turbo (simplejpeg),
which scales by 1/2, 1/4 or 1/8 during the inverse DCT when the target is that
much smaller than the stored frame, and resized by OpenCV: together faster
than PIL (benchmarks/README.md has the figures).
"""

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np
import simplejpeg

from impax.datasets import mel, records

cv2.setNumThreads(1)  # parallelism comes from the loader's worker processes

# Log-mel settings (IMP, after AST/VATT): 25 ms windows every 10 ms at 16 kHz.
MEL_BINS = 128
MEL_FMIN, MEL_FMAX = 80.0, 7600.0
STFT_WINDOW, STFT_HOP = 400, 160
_WINDOW = np.hanning(STFT_WINDOW).astype(np.float32)  # symmetric Hann
SPECTROGRAM_FPS = 100  # frames per second at 16 kHz with hop 160


class DecodeError(ValueError):
  """A record that cannot be decoded into the requested shape."""


@dataclasses.dataclass(frozen=True)
class Augment:
  """Training augmentations; `None` in the loader means evaluation preprocessing."""
  crop_area: tuple[float, float] = (0.3, 1.0)  # random resized crop: fraction of the area
  crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True  # horizontal flip with probability 1/2
  temporal_jitter: bool = True  # random clip start (else the centre)


def parse(data: bytes) -> records.Record:
  """The record's typed view (records.Record); a DecodeError for bytes that are not one."""
  try:
    return records.Record.parse(data)
  except Exception as e:  # protobuf's DecodeError and friends
    raise DecodeError(f"not a tf.train.Example: {e}") from e


# ---------------------------------------------------------------------------
# Vision.

def _crop_box(width: int, height: int, out_h: int, out_w: int, augment: Augment | None,
              rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) of the region resized to out_h x out_w."""
  target_aspect = out_w / out_h
  if augment is not None:
    area = width * height
    for _ in range(10):  # Inception-style: retry until the box fits.
      scale = rng.uniform(*augment.crop_area)
      log_lo, log_hi = np.log(augment.crop_aspect[0]), np.log(augment.crop_aspect[1])
      aspect = target_aspect * np.exp(rng.uniform(log_lo, log_hi))
      w = int(round(np.sqrt(scale * area * aspect)))
      h = int(round(np.sqrt(scale * area / aspect)))
      if 0 < w <= width and 0 < h <= height:
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
        return left, top, left + w, top + h
  # Centre crop to the target's aspect (also the fallback of a failed draw).
  if width / height > target_aspect:
    w, h = max(1, int(round(height * target_aspect))), height
  else:
    w, h = width, max(1, int(round(width / target_aspect)))
  left, top = (width - w) // 2, (height - h) // 2
  return left, top, left + w, top + h


def decode_jpeg(data: bytes, box: tuple[int, int, int, int] | None, out_h: int, out_w: int,
                flip: bool) -> np.ndarray:
  """JPEG -> uint8 [out_h, out_w, 3]: crop `box` (in full-size pixels), resize, flip.

  libjpeg-turbo (simplejpeg) scales by 1/2, 1/4 or 1/8 during decoding when the
  crop is that much larger than the output; OpenCV resizes the rest (area
  averaging when shrinking by 2 or more, else bilinear).
  """
  try:
    full_h, full_w, _, _ = simplejpeg.decode_jpeg_header(data)
    left, top, right, bottom = box if box is not None else (0, 0, full_w, full_h)
    crop_w, crop_h = right - left, bottom - top
    array = simplejpeg.decode_jpeg(
        data, colorspace="RGB",
        min_width=math.ceil(full_w * out_w / crop_w), min_height=math.ceil(full_h * out_h / crop_h))
  except ValueError as e:
    raise DecodeError(f"cannot decode a JPEG: {e}") from e
  fy, fx = array.shape[0] / full_h, array.shape[1] / full_w
  crop = array[int(top * fy):max(int(top * fy) + 1, round(bottom * fy)),
               int(left * fx):max(int(left * fx) + 1, round(right * fx))]
  shrink = min(crop.shape[0] / out_h, crop.shape[1] / out_w)
  out = cv2.resize(crop, (out_w, out_h),
                   interpolation=cv2.INTER_AREA if shrink >= 2 else cv2.INTER_LINEAR)
  return out[:, ::-1] if flip else out


def _frame_indices(num_stored: int, frames: int, start: int) -> np.ndarray:
  """`frames` consecutive stored frames from `start`; a short video repeats its last frame."""
  return np.minimum(np.arange(start, start + frames), num_stored - 1)


def spatial_crops(box: tuple[int, int, int, int], width: int, height: int,
                  crops: int) -> list[tuple[int, int, int, int]]:
  """`crops` boxes the size of the centre box `box`, spaced uniformly along the frame's
  longer side from one end to the other (3: both ends and the centre, as IMP and ViViT
  evaluate video); 1: `box`. On a frame of the box's own aspect they coincide."""
  if crops == 1:
    return [box]
  left, top, right, bottom = box
  w, h = right - left, bottom - top
  if width - w >= height - h:
    return [(x, top, x + w, bottom) for x in
            (int(round(i * (width - w) / (crops - 1))) for i in range(crops))]
  return [(left, y, right, y + h) for y in
          (int(round(i * (height - h) / (crops - 1))) for i in range(crops))]


def video(stored: records.Video, frames: int, height: int, width: int,
          augment: Augment | None, rng: np.random.Generator, clips: int = 1,
          crops: int = 1) -> tuple[np.ndarray, list[float]]:
  """uint8 [frames, h, w, 3] (or [views, ...] in evaluation) and each clip's start in seconds.

  Training: a random start (temporal jitter), one random crop box and one flip
  for the whole clip, so motion stays coherent. Evaluation: `clips` starts
  spaced uniformly over the video times `crops` spatial crops (spatial_crops):
  clips * crops views, clip-major ([clip 0 crop 0, clip 0 crop 1, ...]).
  """
  fps, full_h, full_w = stored.fps, stored.height, stored.width
  last_start = max(0, stored.num_frames - frames)
  if augment is not None:
    starts = [int(rng.integers(0, last_start + 1)) if augment.temporal_jitter else last_start // 2]
    box = _crop_box(full_w, full_h, height, width, augment, rng)
    flip = augment.flip and bool(rng.integers(0, 2))
  else:
    starts = ([last_start // 2] if clips == 1 else
              [int(round(i * last_start / (clips - 1))) for i in range(clips)])
    box, flip = _crop_box(full_w, full_h, height, width, None, rng), False
  boxes = [box] if augment is not None else spatial_crops(box, full_w, full_h, crops)
  decoded = {}  # clips may overlap: decode each stored frame (and crop) once
  out = np.empty((len(starts) * len(boxes), frames, height, width, 3), np.uint8)
  for c, start in enumerate(starts):
    for t, i in enumerate(_frame_indices(stored.num_frames, frames, start)):
      for k, crop in enumerate(boxes):
        if (i, crop) not in decoded:
          decoded[i, crop] = decode_jpeg(stored.frames[i], crop, height, width, flip)
        out[c * len(boxes) + k, t] = decoded[i, crop]
  return (out[0] if len(out) == 1 else out), [s / fps for s in starts]


def image(stored: records.Image, height: int, width: int, augment: Augment | None,
          rng: np.random.Generator) -> np.ndarray:
  box = _crop_box(stored.width, stored.height, height, width, augment, rng)
  flip = augment is not None and augment.flip and bool(rng.integers(0, 2))
  return decode_jpeg(stored.encoded, box, height, width, flip)


# ---------------------------------------------------------------------------
# Audio.

def waveform(stored: records.Audio, seconds: float, augment: Augment | None,
             rng: np.random.Generator, start_seconds: float | None = None,
             sample_rate: int = 16000) -> np.ndarray:
  """float32 [seconds * sample_rate]: a window of the clip, zero-padded when short.

  `start_seconds` aligns the window with a video clip; otherwise training takes
  a random window and evaluation the centre one.
  """
  rate = stored.sample_rate
  if rate != sample_rate:
    raise DecodeError(f"audio is stored at {rate} Hz, the task wants {sample_rate} Hz: "
                      "rebuild the dataset with --audio-sample-rate "
                      f"{sample_rate}")
  if len(stored.pcm_s16le) % 2:
    raise DecodeError("audio/pcm_s16le has an odd number of bytes")
  samples = stored.samples()
  want = int(round(seconds * sample_rate))
  spare = max(0, len(samples) - want)
  if start_seconds is not None:
    start = min(spare, int(round(start_seconds * sample_rate)))
  elif augment is not None and augment.temporal_jitter:
    start = int(rng.integers(0, spare + 1))
  else:
    start = spare // 2
  out = np.zeros(want, np.float32)
  window = samples[start:start + want]
  out[:len(window)] = window.astype(np.float32) / 32768.0
  return out


def spectrogram_frames(seconds: float) -> int:
  return int(round(seconds * SPECTROGRAM_FPS))


def log_mel(wave: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
  """float32 [frames, 128]: log(mel power + 1e-6), 25 ms Hann windows every 10 ms.

  Exactly spectrogram_frames(len / rate) frames (the last window zero-padded),
  so every example of a bucket has the same shape. The filterbank's product is
  sparse: see mel.sparse_filters.
  """
  frames = max(1, len(wave) // STFT_HOP)
  padded = np.zeros((frames - 1) * STFT_HOP + STFT_WINDOW, np.float32)
  padded[:len(wave)] = wave[:len(padded)]
  power = mel.power_spectrogram(padded, STFT_WINDOW, STFT_HOP, _WINDOW, frames)  # float32
  bands = mel.sparse_filters(sample_rate, STFT_WINDOW, MEL_BINS, MEL_FMIN, MEL_FMAX)
  return np.log((bands @ power.T).T + np.float32(1e-6))


# ---------------------------------------------------------------------------
# Text and labels.

def pad_tokens(ids: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
  """int32 [length] ids (cut or zero-padded) and their mask."""
  ids = ids[:length]
  tokens, mask = np.zeros(length, np.int32), np.zeros(length, np.int32)
  tokens[:len(ids)], mask[:len(ids)] = ids, 1
  return tokens, mask


def label(indices: Sequence[int], num_labels: int, multi_label: bool):
  """A record's label indices as an int32 index (the first) or a float32 multi-hot."""
  if any(not 0 <= i < num_labels for i in indices):
    raise DecodeError(f"label index {indices} outside the vocabulary of {num_labels}")
  if multi_label:
    hot = np.zeros(num_labels, np.float32)
    hot[list(indices)] = 1.0
    return hot
  return np.int32(indices[0])
