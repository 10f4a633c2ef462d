"""Decoding media: video clips and audio with ffmpeg, images with Pillow (and OpenCV's area
filter where a build asks for it).

Each function takes a local file and returns stored-ready data, or raises
`MediaError` whose message says what is wrong with which file; the pipeline
records it as the example's failure.

One ffmpeg process decodes a video clip: frames come out of stdout as BMP
images (their header carries the size, so no probe is needed first) and the
audio track, when there is one, as a WAV stream on a second pipe. Every pipe
is drained by its own thread and the process is killed at a timeout, so a
stuck or chatty ffmpeg never hangs a worker.
"""

import contextlib
import dataclasses
import fcntl
import io
import math
import os
import re
import struct
import subprocess
import threading

import cv2
import ffmpeg
import numpy as np
import simplejpeg
import soxr
from PIL import ExifTags, Image, ImageOps

from impax.datasets import mel
from impax.pipelines.config import JPEG_MAX_SIDE
from impax.pipelines.tools import ffmpeg_binary

cv2.setNumThreads(1)  # parallelism comes from the build's workers


class MediaError(Exception):
  """A media file cannot be used; the message is for the failures file."""


@dataclasses.dataclass
class Audio:
  pcm_s16le: bytes  # mono, 16-bit little-endian
  sample_rate: int

  @property
  def num_samples(self) -> int:
    return len(self.pcm_s16le) // 2


@dataclasses.dataclass
class VideoClip:
  frames: list[bytes]  # one JPEG per frame
  fps: float
  height: int
  width: int
  audio: Audio | None
  source_duration: float | None  # of the whole file, seconds


# -- ffmpeg processes -------------------------------------------------------


class _Drain(threading.Thread):
  """Reads a pipe to its end in the background, keeping all or only head and tail."""

  def __init__(self, pipe, keep_all: bool):
    super().__init__(daemon=True)
    self.pipe, self.keep_all = pipe, keep_all
    self.buffer, self.head, self.tail = bytearray(), b"", b""

  def run(self):
    with self.pipe:
      while chunk := self.pipe.read(1 << 16):
        if self.keep_all:
          self.buffer += chunk  # grows in place: no second copy when read
        elif len(self.head) < 1 << 14:
          self.head += chunk
        else:
          self.tail = (self.tail + chunk)[-(1 << 14):]

  @property
  def data(self) -> bytes | bytearray:
    return self.buffer if self.keep_all else self.head + self.tail


def _ffmpeg_args(stream) -> list[str]:
  return [ffmpeg_binary(), "-nostdin", "-hide_banner", "-nostats", *stream.get_args()]


PIPE_BYTES = 1 << 20  # Linux's largest pipe for a user without privileges, by default


def _widen(pipe):
  """Gives a pipe from ffmpeg a 1 MiB buffer (Linux), not 64 KiB: a 256-pixel frame is
  about 350 KB, and with the small buffer each frame costs both processes a dozen
  wake-ups (benchmarks/README.md, issue 15, has what they cost). Elsewhere, or where
  the system's limit is lower, the pipe stays as it is."""
  with contextlib.suppress(AttributeError, OSError):
    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
  return pipe


def _input_path(path: str) -> str:
  # The file: protocol keeps names with a leading '-' or a ':' from being
  # read as options or other protocols.
  return "file:" + os.path.abspath(path)


_DURATION = re.compile(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_STREAM = re.compile(rb"^\s*Stream #0:\d+.*?: (Video|Audio): (.*)$", re.M)


def _input_info(stderr: bytes) -> tuple[float | None, list[str]]:
  """(duration, kinds of streams) of input #0, from ffmpeg's banner on stderr."""
  head = stderr.split(b"Output #0", 1)[0]
  duration = None
  if m := _DURATION.search(head):
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
  kinds = [m[1].decode().lower() for m in _STREAM.finditer(head)
           if b"(attached pic)" not in m[2]]
  return duration, kinds


def _last_error(stderr: bytes) -> str:
  # ffmpeg names each component with its address in memory ("[mov,mp4 @ 0x55f6e9939c40]"),
  # which differs run to run: without it, the failures file is the same bytes every time.
  text = re.sub(r" @ 0x[0-9a-f]+\]", "]", stderr.decode("utf-8", "replace"))
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  errors = [l for l in lines if not l.startswith(("Input #", "Stream #", "Duration:", "Metadata:"))]
  return " | ".join((errors or lines)[-3:])[:500] or "no message"


def _wav_samples(data: bytes | bytearray) -> tuple[np.ndarray, int]:
  """Float32 samples and rate of a streamed WAV (its sizes may be unset), without a copy."""
  if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
    raise MediaError("ffmpeg produced no audio")
  pos, rate = 12, None
  while pos + 8 <= len(data):
    chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
    if chunk == b"fmt ":
      rate = struct.unpack("<I", data[pos + 12:pos + 16])[0]
    elif chunk == b"data":
      end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), pos + 8 + size)
      if rate is None:
        break
      count = (end - pos - 8) // 4
      return np.frombuffer(data, np.float32, count=count, offset=pos + 8), rate
    pos += 8 + size + (size & 1)
  raise MediaError("ffmpeg produced no audio")


def _resample(samples: np.ndarray, rate: int, target: int) -> Audio:
  # A float file can hold them; stored as PCM they would be silence and full scale.
  if not np.isfinite(samples).all():
    raise MediaError("the audio decodes to samples that are not finite (NaN or infinity)")
  if rate != target and samples.size:
    # What librosa.resample(res_type="soxr_hq") computes (the same bytes, tested): soxr,
    # then cut or zero-padded to ceil(n * ratio) samples.
    size = int(np.ceil(samples.shape[-1] * (float(target) / rate)))
    samples = soxr.resample(samples, rate, target, quality="soxr_hq")
    samples = samples[:size] if samples.size >= size else np.pad(samples, (0, size - samples.size))
  pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
  return Audio(pcm.tobytes(), target)


def _clip_input(path: str, start: float | None, duration: float | None, threads: int):
  kwargs = {}
  if start:
    kwargs["ss"] = f"{start:.6f}"  # before -i: input seeking, fast and frame-exact
  if duration is not None:
    kwargs["t"] = f"{duration:.6f}"
  if threads:
    kwargs["threads"] = threads
  return ffmpeg.input(_input_path(path), **kwargs)


def _clip_duration(start, end, cap):
  # A spec file's reader may hand on any float: NaN as an end would mean "no end".
  for name, value in (("start", start), ("end", end)):
    if value is not None and not math.isfinite(value):
      raise MediaError(f"clip {name} {value} is not a finite number of seconds")
  return min(cap, end - (start or 0.0)) if end is not None else cap


def _read_frames(stdout, jpeg_quality: int):
  """Reads a stream of BMP images (each header holds its file size) and yields
  each as a JPEG as soon as it arrives, so only JPEGs accumulate in memory."""
  while header := stdout.read(6):
    if len(header) < 6 or header[:2] != b"BM":
      raise MediaError("ffmpeg returned a malformed frame stream")
    size = struct.unpack("<I", header[2:6])[0]
    body = stdout.read(size - 6)
    if len(body) != size - 6:
      raise MediaError("ffmpeg's frame stream ended inside a frame")
    with Image.open(io.BytesIO(header + body)) as image:
      # A 24-bit BMP opens as RGB: encoded as it is, without convert's copy.
      yield _jpeg(image if image.mode == "RGB" else image.convert("RGB"), jpeg_quality), image.size


def decode_video(path: str, *, start: float | None, end: float | None, fps: float,
                 max_frames: int, short_side: int, jpeg_quality: int, audio_track: str,
                 sample_rate: int, timeout: float, threads: int = 1,
                 max_long_side: int = 0) -> VideoClip:
  """Frames of the clip [start, end) at `fps` as a viewer sees them, resized to
  `short_side` (`_scale`), as JPEGs; and its audio."""
  duration = _clip_duration(start, end, max_frames / fps)
  want_audio = audio_track != "ignore"
  scale = _scale(short_side, max_long_side)
  clip = _run_video(path, start, duration, fps, max_frames, scale, jpeg_quality,
                    want_audio, sample_rate, timeout, threads)
  if clip.audio is None and audio_track == "required":
    raise MediaError(f"{path} has no audio stream, and audio_track=required")
  return clip


def _long_side_cap(max_long_side: int) -> int:
  return min(max_long_side or JPEG_MAX_SIDE, JPEG_MAX_SIDE)


def _scale(short_side: int, max_long_side: int) -> tuple[str, str]:
  """ffmpeg's scale expressions (width, height): the frame as a viewer sees it, iw*sar by
  ih (an anamorphic DVD's 720x576 is 4:3 or 16:9, not 5:4), resized so its short side is
  `short_side`, or smaller where the long side would pass `max_long_side`; the other
  side even."""
  s, cap = short_side, _long_side_cap(max_long_side)
  even = lambda size: f"max(2,2*round({size}/2))"
  # dar is iw/ih*sar, with sar 1 where the file gives none.
  tall_w = f"if(gt({s},{cap}*dar),{even(f'{cap}*dar')},{s})"
  tall_h = f"if(gt({s},{cap}*dar),{cap},{even(f'{s}/dar')})"
  wide_w = f"if(gt({s}*dar,{cap}),{cap},{even(f'{s}*dar')})"
  wide_h = f"if(gt({s}*dar,{cap}),{even(f'{cap}/dar')},{s})"
  return f"if(lte(dar,1),{tall_w},{wide_w})", f"if(lte(dar,1),{tall_h},{wide_h})"


def _run_video(path, start, duration, fps, max_frames, scale, jpeg_quality,
               want_audio, sample_rate, timeout, threads) -> VideoClip:
  source = _clip_input(path, start, duration, threads)
  video = source["V:0"].filter("fps", fps=fps).filter("scale", *scale, flags="bicubic")
  outputs = [ffmpeg.output(video, "pipe:1", format="image2pipe", vcodec="bmp",
                           frames=max_frames)]
  read_fd = write_fd = None
  if want_audio:
    read_fd, write_fd = os.pipe()
    outputs.append(ffmpeg.output(source["a:0"], f"pipe:{write_fd}", format="wav",
                                 acodec="pcm_f32le", ac=1))
  stream = ffmpeg.merge_outputs(*outputs).global_args("-filter_complex_threads", str(threads or 1))
  try:
    proc = subprocess.Popen(_ffmpeg_args(stream), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(write_fd,) if want_audio else ())
  finally:
    if write_fd is not None:
      os.close(write_fd)
  _widen(proc.stdout)
  stderr = _Drain(proc.stderr, keep_all=False)
  audio_out = _Drain(_widen(os.fdopen(read_fd, "rb")), keep_all=True) if want_audio else None
  for drain in (stderr, audio_out):
    if drain:
      drain.start()
  timed_out = threading.Event()
  timer = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
  timer.start()
  try:
    frames = list(_read_frames(proc.stdout, jpeg_quality))
    code = proc.wait()
  except MediaError:
    proc.kill()
    proc.wait()
    raise
  finally:
    timer.cancel()
    proc.stdout.close()
    stderr.join()
    if audio_out:
      audio_out.join()
  if timed_out.is_set():
    raise MediaError(f"ffmpeg timed out after {timeout:g} s on {path}")
  source_duration, kinds = _input_info(stderr.data)
  if code != 0:
    if want_audio and "video" in kinds and "audio" not in kinds:
      # The audio output had nothing to map: decode again without it.
      return _run_video(path, start, duration, fps, max_frames, scale, jpeg_quality,
                        False, sample_rate, timeout, threads)
    if kinds and "video" not in kinds:
      raise MediaError(f"{path} has no video stream")
    raise MediaError(f"ffmpeg could not decode {path}: {_last_error(stderr.data)}")
  if not frames:
    if start and source_duration is not None and start >= source_duration:
      raise MediaError(f"clip start {start:g} s is past the end of {path} "
                       f"(duration {source_duration:g} s)")
    raise MediaError(f"no frames decoded from {path}: {_last_error(stderr.data)}")
  audio = None
  if want_audio:
    samples, rate = _wav_samples(audio_out.data)
    audio = _resample(samples, rate, sample_rate) if samples.size else None
  width, height = frames[-1][1]
  return VideoClip(frames=[jpeg for jpeg, _ in frames], fps=float(fps), height=height, width=width,
                   audio=audio,
                   source_duration=source_duration)


def decode_audio(path: str, *, start: float | None, end: float | None, sample_rate: int,
                 max_seconds: float, timeout: float, threads: int = 1) -> Audio:
  """Mono audio of [start, end) resampled to `sample_rate`; any format ffmpeg reads."""
  duration = _clip_duration(start, end, max_seconds)
  source = _clip_input(path, start, duration, threads)
  stream = ffmpeg.output(source["a:0"], "pipe:1", format="wav", acodec="pcm_f32le", ac=1)
  try:
    result = subprocess.run(_ffmpeg_args(stream), stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=timeout)
  except subprocess.TimeoutExpired:
    raise MediaError(f"ffmpeg timed out after {timeout:g} s on {path}") from None
  source_duration, kinds = _input_info(result.stderr)
  if result.returncode != 0:
    if kinds and "audio" not in kinds:
      raise MediaError(f"{path} has no audio stream")
    raise MediaError(f"ffmpeg could not decode {path}: {_last_error(result.stderr)}")
  samples, rate = _wav_samples(result.stdout)
  if not samples.size:
    if start and source_duration is not None and start >= source_duration:
      raise MediaError(f"clip start {start:g} s is past the end of {path} "
                       f"(duration {source_duration:g} s)")
    raise MediaError(f"no audio samples decoded from {path}")
  return _resample(samples, rate, sample_rate)


# -- images -----------------------------------------------------------------


def _jpeg(image: Image.Image, quality: int) -> bytes:
  out = io.BytesIO()
  image.save(out, format="JPEG", quality=quality)
  return out.getvalue()


def _to_rgb(image: Image.Image) -> Image.Image:
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    # Transparent pixels are composited on white, as a viewer shows them.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


# An image's shrinking filter (the build's image_resize_filter): Pillow's LANCZOS, or
# OpenCV's INTER_AREA (each pixel the mean of the area it covers: img2dataset's filter), a
# little softer and, 640x480 to 341x256, 1.9 ms against LANCZOS's 5.5 (benchmarks/README.md).
RESIZE_FILTERS = ("lanczos", "area")


def _draft_scale(width: int, height: int, size: tuple[int, int]) -> int:
  """The DCT scale (1, 2, 4 or 8) Pillow's JPEG `draft` picks to decode at least `size`."""
  scale = min(width // size[0], height // size[1])
  return next(s for s in (8, 4, 2, 1) if scale >= s or s == 1)


def _simplejpeg(data: bytes, colorspace: str, width: int, height: int, scale: int) -> np.ndarray | None:
  """A YCbCr or grey JPEG's pixels decoded by simplejpeg at 1/`scale`: the same pixels as
  Pillow's (both libjpeg-turbo's accurate DCT and fancy upsampling; the tests compare them),
  without Pillow's copies (a 640x480 photo: 2.8 against 3.4 ms). None where it would not be
  Pillow's: another colour space, or libjpeg's warning that Pillow lets pass. From 8 pixels a
  side, only 1/`scale` gives the size asked, so that is the scale simplejpeg picks."""
  if min(width, height) < 8:
    return None
  try:
    if simplejpeg.decode_jpeg_header(data)[2] not in ("YCbCr", "Gray"):
      return None
    shape = (-(-height // scale), -(-width // scale))
    pixels = simplejpeg.decode_jpeg(data, colorspace, min_factor=scale, min_width=shape[1],
                                    min_height=shape[0])
  except ValueError:
    return None
  return pixels if pixels.shape[:2] == shape else None


def _upright_jpeg(image: Image.Image, data: bytes, draft: tuple[int, int] | None) -> np.ndarray | None:
  """An opened JPEG's RGB pixels as simplejpeg decodes them, at most `draft` smaller (its DCT
  scale); None where Pillow must: an EXIF orientation to apply, a colour mode to convert."""
  if image.format != "JPEG" or image.mode not in ("RGB", "L"):
    return None
  if image.getexif().get(ExifTags.Base.Orientation) not in (None, 1):
    return None
  scale = _draft_scale(*image.size, draft) if draft else 1
  return _simplejpeg(data, "RGB", *image.size, scale)  # grey to RGB as Pillow's convert does


def _shrink(image: Image.Image | np.ndarray, size: tuple[int, int], resize_filter: str) -> Image.Image:
  if resize_filter == "area":
    pixels = image if isinstance(image, np.ndarray) else np.asarray(image)
    return Image.fromarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))
  image = image if isinstance(image, Image.Image) else Image.fromarray(image)
  # reducing_gap: where it shrinks over 3 times, an integer box reduce first, then LANCZOS.
  return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def process_image(data: bytes, *, short_side: int, jpeg_quality: int, max_long_side: int = 0,
                  resize_filter: str = "lanczos", name: str = "image") -> tuple[bytes, int, int]:
  """JPEG bytes, height, width of an image: EXIF orientation applied, RGB, resized so its
  short side is `short_side` (0: as it is) or smaller where its long side would pass
  `max_long_side` (0: JPEG's limit), shrunk with `resize_filter` (RESIZE_FILTERS)."""
  if resize_filter not in RESIZE_FILTERS:
    raise ValueError(f"resize_filter {resize_filter!r}: use one of {', '.join(RESIZE_FILTERS)}")
  if not data:
    raise MediaError(f"{name} is empty")
  try:
    with Image.open(io.BytesIO(data)) as image:
      # The sides' ratios hold whichever way EXIF turns the image.
      width, height = image.size
      ratio = short_side / min(width, height) if short_side else 1.0
      ratio = min(ratio, _long_side_cap(max_long_side) / max(width, height))
      size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
      # A JPEG decodes at 1/2, 1/4 or 1/8 scale (DCT scaling), never below twice the
      # size it shrinks to, so the filter still makes the last step: most of a large
      # photo's cost was decoding and filtering pixels that step throws away.
      draft = (size[0] * 2, size[1] * 2) if ratio < 0.5 else None
      pixels = _upright_jpeg(image, data, draft)
      if pixels is None:
        if draft:
          image.draft(None, draft)
        image.load()
        if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):  # turned a quarter
          size = size[::-1]
        pixels = _to_rgb(ImageOps.exif_transpose(image))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise MediaError(f"{name} is not a readable image: {e}") from None
  if ratio < 1:
    image = _shrink(pixels, size, resize_filter)
  else:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    if ratio > 1:
      image = image.resize(size, Image.Resampling.BICUBIC)
  return _jpeg(image, jpeg_quality), image.size[1], image.size[0]


# -- perceptual fingerprints ------------------------------------------------
# 64-bit DCT hashes (imagehash.phash) that survive re-encoding, resizing, small
# crops and grayscale, and for sound a 64-bit value per frame; tools/dedup.py
# groups records whose fingerprints are close. Stored as signed int64 (the
# record's int64 list).

FINGERPRINT_FRAMES = 16  # frames of a clip averaged into its hash
CENTRE = 0.95  # a video's or image's second hash: its centre, which a crop of a few percent keeps whole
AUDIO_HOP_SECONDS = 0.032  # one 64-bit value per 32 ms of sound
AUDIO_MAX_FRAMES = 1024  # ~33 s: enough to tell clips apart, bounded in size
AUDIO_BANDS = 64


def _luma(jpeg: bytes) -> Image.Image:
  """A JPEG's luma at the largest DCT scale that keeps 64 pixels a side (Pillow's draft):
  simplejpeg's decode where it gives the same pixels (a 341x256 JPEG: 0.4 against 0.5 ms)."""
  with contextlib.suppress(ValueError):
    height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
    luma = _simplejpeg(jpeg, "GRAY", width, height, _draft_scale(width, height, (64, 64)))
    if luma is not None:
      return Image.fromarray(luma[..., 0], "L")
  with Image.open(io.BytesIO(jpeg)) as image:
    image.draft("L", (64, 64))
    return image.convert("L")


def _thumbnails(jpeg: bytes) -> tuple[np.ndarray, np.ndarray]:
  """32x32 luma thumbnails of a JPEG, of the whole and of its middle CENTRE of each side,
  from one decode (at 1/8 scale where it can: draft)."""
  image = _luma(jpeg)
  w, h = image.size
  centre = image.crop((round(w * (1 - CENTRE) / 2), round(h * (1 - CENTRE) / 2),
                       round(w * (1 + CENTRE) / 2), round(h * (1 + CENTRE) / 2)))
  return tuple(np.asarray(x.resize((32, 32), Image.Resampling.BOX), np.float32)
               for x in (image, centre))


def _phash(thumbnail: np.ndarray) -> int:
  """imagehash.phash of a 32x32 thumbnail rounded to 8 bits, as a signed int64: its DCT on
  the same pixels, without its copies of a 32x32 image (a convert, a resize to the same
  size) and its round trip through a hex string (0.04 against 0.10 ms a hash; the same
  values, tests/pipelines/test_phash.py)."""
  import scipy.fftpack  # 0.3 s to import: loaded with a build's first fingerprint
  pixels = thumbnail.round().astype(np.uint8)
  low = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:8, :8]
  value = int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big")
  return value - (1 << 64) if value >= 1 << 63 else value


def video_fingerprint(frames: list[bytes]) -> list[int]:
  """Two DCT hashes of the mean of up to FINGERPRINT_FRAMES evenly spaced frames (JPEGs):
  of the whole frame and of its centre (CENTRE), as an image's.

  The mean over the clip is what survives trimming a fraction of a second and
  a changed frame rate; a single frame would not. The centre's hash is what
  survives a crop of a few percent (image_fingerprint says why)."""
  picks = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), FINGERPRINT_FRAMES)).round())
  whole, centre = np.mean([_thumbnails(frames[int(i)]) for i in picks], axis=0)
  return [_phash(whole), _phash(centre)]


def image_fingerprint(jpeg: bytes) -> list[int]:
  """Two DCT hashes of an image (JPEG): of the whole and of its centre (CENTRE).

  dedup matches an image's whole hash against either of another's: a crop of a
  few percent moves everything in the whole image's hash, but the cropped
  image is close to the original's centre."""
  return [_phash(t) for t in _thumbnails(jpeg)]


def audio_fingerprint(audio: Audio) -> list[int]:
  """One 64-bit value per AUDIO_HOP_SECONDS of sound: bit b says whether mel band b
  (64 bands from 50 Hz to 8 kHz) is within 20 dB of the frame's loudest band;
  0 for a frame 30 dB or more below the clip's loudest. [] for silence.

  A sequence, not one clip hash, so that dedup can align two clips (a clip
  trimmed by a fraction of a second is the original shifted by some frames);
  the bands near each frame's peak are what lossy codecs and resampling keep."""
  samples = np.frombuffer(audio.pcm_s16le, "<i2").astype(np.float32) / 32768.0
  samples = samples[:round(AUDIO_MAX_FRAMES * AUDIO_HOP_SECONDS * audio.sample_rate)]
  if not np.any(samples):
    return []
  if samples.size < 2048:
    samples = np.pad(samples, (0, 2048 - samples.size))
  bands = mel.melspectrogram(samples, audio.sample_rate, n_fft=2048,
                             hop=round(audio.sample_rate * AUDIO_HOP_SECONDS),
                             n_mels=AUDIO_BANDS, fmin=50.0, fmax=min(8000.0, audio.sample_rate / 2))
  db = mel.power_to_db(bands, top_db=60.0).T  # [frames, bands], 0 dB the loudest
  peak = db.max(axis=1, keepdims=True)
  bits = (db > peak - 20.0) & (peak > -30.0)
  values = (bits.astype(np.uint64) << np.arange(AUDIO_BANDS, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
  return values.view(np.int64)[:AUDIO_MAX_FRAMES].tolist()
