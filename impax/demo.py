"""The demo's corpus, its datasets' settings and its training config.

    impax demo-corpus DIR           # only the corpus and its tokenizer: write_corpus()
    impax demo DIR                  # make demo: the demo end to end, flows/demo.py

1. The corpus (generate): digits in videos with sound, images and sounds.
2. Its datasets: each manifest built into a prepared dataset under DIR/data with
   settings(), every one with the same tokenizer (shared_tokenizer); build_all
   builds them without Prefect.
3. Its run: the tiny MoE preset with AGD on image-text, video-text, video-audio and
   audio classification (DEMO_CONFIG, train/configs/demo.py) for a few minutes on a
   CPU, evaluated on the held-out splits against the zero-shot goal (ZERO_SHOT_GOAL).

The demo end to end (`make demo`, `impax demo DIR`) is a Prefect flow, flows/demo.py,
which runs these on flows/end_to_end.py's steps; the production flows import nothing
of this module. Everything lands under DIR: corpus/, data/ (prepared datasets), run/
(checkpoints, metrics.jsonl, tensorboard/, plots/, eval.json).

The corpus is small and learnable, made from scikit-learn's digits. Every
example shows or sounds one handwritten digit (sklearn's bundled 8x8 digits, so
nothing is downloaded), and its label and caption name the digit in words. A
model trained on the train split can therefore be checked by zero-shot
classification of the held-out videos with prompts such as "the digit
seven". Three disjoint splits (the demo's sizes in SIZES and HELD_OUT): train;
validation, on which recipes and the best checkpoint are chosen; and test,
reported once. The held-out splits draw from sklearn samples that train (and
each other) never see, so they measure generalisation to unseen writers.

  generate("/tmp/demo")  # then build shards from /tmp/demo/*.jsonl

Layout under out_dir:
  videos/<split>-<NNNNN>.mp4   H.264 + AAC; the tone's pitch names the digit.
  images/<split>-<NNNNN>.jpg|png
  audio/<split>-<NNNNN>.wav|flac  digit+1 beeps at the digit's pitch.
  {videos,images,audio}-{train,validation,test}.jsonl  one JSON object per example:
      id, the media path relative to the manifest, label (the digit's name),
      caption (videos and images), and, which the pipeline ignores: digit_index
      (the sklearn sample shown, for checking the split), colour (videos and
      images) and motion (videos, in words), for probing what a model's
      embeddings encode (benchmarks/demo_seeds.py).

The same arguments give byte-identical files on one machine: every example has
its own seeded numpy Generator, and ffmpeg runs single-threaded with bitexact
flags. (Another ffmpeg or libFLAC build may change container or FLAC header
bytes; ffmpeg 5.1 and 9.0 decode to identical frames and samples.)
"""

import concurrent.futures
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import PIL.Image
import sklearn.datasets
import soundfile

import impax.train
from impax.datasets import registry
from impax.pipelines import build, storage, text
from impax.pipelines import config as build_config
from impax.pipelines.tools import ffmpeg_binary

# ------------------------------------------------------------------- Corpus ---

DIGIT_NAMES = (
    "zero", "one", "two", "three", "four",
    "five", "six", "seven", "eight", "nine")

SPLITS = ("train", "validation", "test")  # in build order: train fixes the vocabularies
# With the seed, these give each split its own random streams (train and test kept
# the ids they had before validation existed).
_SPLIT_IDS = {"train": 0, "test": 1, "validation": 2}
FPS = 10
VIDEO_SAMPLE_RATE = 16000
AUDIO_SAMPLE_RATES = (16000, 22050, 44100)
FFMPEG_TIMEOUT_S = 120

# Named so that captions can mention the colour; all bright, on dark backgrounds.
COLOURS = {
    "red": (230, 40, 40),
    "green": (50, 210, 70),
    "blue": (80, 120, 255),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
    "orange": (250, 140, 30),
    "purple": (190, 80, 240),
    "cyan": (40, 220, 230),
}

# Sentences, with a full stop, as real captions and the zero-shot prompts are.
VIDEO_CAPTIONS = (
    "the digit {name} {motion}.",
    "the {colour} digit {name} {motion}.",
    "the number {name} {motion} on a dark background.",
    "a video of a handwritten {name} {motion}.",
)
IMAGE_CAPTIONS = (
    "a photo of the digit {name}.",
    "an image of the number {name}.",
    "a handwritten {name}.",
)
# Only for images that keep their colour (not the grayscale ones).
COLOUR_IMAGE_CAPTIONS = (
    "the number {name} in {colour}.",
    "the {colour} digit {name} on a noisy background.",
)

# The digit's side as a fraction of the frame's short side. Large digits keep
# the variance of its position small: logistic regression on 32x32 pixels of
# held-out images scores 47% with digits of 0.55-0.9 and 88% with 0.8-0.95,
# and the tiny preset's supervised accuracy after 600 steps rises from 45% to 62%.
VIDEO_SPRITE = 0.8
IMAGE_SPRITE = (0.8, 0.95)

# With the seed and split, these give each example its own random stream
# (from 1, so no stream repeats the one that splits the samples).
_MODALITY_IDS = {"video": 1, "image": 2, "audio": 3}


def generate(out_dir: str, *, videos: int = 200, images: int = 200,
             audio: int = 200, held_out: dict[str, float] | None = None,
             seconds: float = 2.0, size: int = 64,
             seed: int = 0) -> dict[str, str]:
  """Writes the corpus under out_dir and returns its manifests' paths.

  Args:
    out_dir: where to write (created if missing; existing files are replaced).
    videos, images, audio: examples per modality, all splits together.
    held_out: {split: share} of each modality's examples, and of sklearn's digit
      samples, held out for each of "validation" and "test"; train has the
      rest. Default {"test": 0.2}; the demo's is HELD_OUT.
    seconds: length of each video.
    size: height (and usually width) of videos and images, in pixels.
    seed: the same seed and arguments give byte-identical files.

  Returns:
    {"videos-train": path, "videos-test": ..., "images-train": ..., ...}, the
    paths of the JSONL manifests, train first, then the held-out splits in
    SPLITS order.
  """
  held_out = {"test": 0.2} if held_out is None else dict(held_out)
  if not held_out or set(held_out) - set(SPLITS[1:]):
    raise ValueError(f"held_out takes shares of {SPLITS[1:]}, got {sorted(held_out)}")
  if not all(0 < share < 1 for share in held_out.values()) or sum(held_out.values()) >= 1:
    raise ValueError(f"held_out shares must be in (0, 1) and leave some for train, "
                     f"got {held_out}")
  if size < 16:
    raise ValueError(f"size must be at least 16 pixels, got {size}")
  if seconds <= 0:
    raise ValueError(f"seconds must be positive, got {seconds}")

  digits = sklearn.datasets.load_digits()
  digit_images = digits.images / 16.0  # sklearn's pixels are 0..16
  class_pools = _split_samples(digits.target, held_out, seed)
  splits = [s for s in SPLITS if s == "train" or s in held_out]

  modalities = (
      # (modality, folder, total, writer)
      ("video", "videos", videos, _write_video),
      ("image", "images", images, _write_image),
      ("audio", "audio", audio, _write_audio),
  )
  manifests = {}
  # ffmpeg runs single-threaded for determinism; two at once use both cores.
  with tempfile.TemporaryDirectory() as scratch, \
      concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
    options = {"seconds": seconds, "size": size, "scratch": scratch}
    for modality, folder, total, write in modalities:
      os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
      counts = split_sizes(total, held_out)
      for split in splits:
        count = counts[split]
        ids = (_MODALITY_IDS[modality], _SPLIT_IDS[split])
        samples = _assign_samples(
            class_pools[split], count, np.random.default_rng([seed, *ids, 0, 0]))

        # Called only within this iteration, so the loop variables are current.
        def write_one(number):
          digit, digit_index = samples[number]
          rng = np.random.default_rng([seed, *ids, 1, number])
          path, annotations = write(
              out_dir, f"{folder}/{split}-{number:05d}", number, digit,
              digit_images[digit_index], rng, **options)
          record = {"id": f"{modality}-{split}-{number:05d}", modality: path,
                    **annotations}
          if modality != "audio":  # audio is synthesized from the digit alone
            record["digit_index"] = int(digit_index)
          return record

        records = list(executor.map(write_one, range(count)))
        name = f"{folder}-{split}"
        manifests[name] = os.path.join(out_dir, f"{name}.jsonl")
        with open(manifests[name], "w") as f:
          f.writelines(json.dumps(record) + "\n" for record in records)
  return manifests


def split_sizes(total: int, held_out: dict[str, float]) -> dict[str, int]:
  """{split: examples} of `total`: each held-out split its rounded share, train the rest."""
  sizes = {split: round(total * share) for split, share in held_out.items()}
  return {"train": total - sum(sizes.values()), **sizes}


def _split_samples(targets, held_out, seed):
  """{split: [sample indices of digit d for d in 0..9]}, disjoint across splits.

  Test takes the first share of one seeded permutation, validation the next,
  train the rest."""
  order = np.random.default_rng(seed).permutation(len(targets))
  by_split, start = {}, 0
  for split in ("test", "validation"):
    if split in held_out:
      n = round(len(order) * held_out[split])
      by_split[split], start = order[start:start + n], start + n
  by_split["train"] = order[start:]
  return {split: [indices[targets[indices] == digit] for digit in range(10)]
          for split, indices in by_split.items()}


def _assign_samples(pools, count, rng):
  """[(digit, sample index)] cycling the digits 0..9 so classes stay balanced.

  Each class's samples are used in a shuffled order before any repeats.
  """
  pools = [rng.permutation(pool) for pool in pools]
  return [(n % 10, pools[n % 10][(n // 10) % len(pools[n % 10])])
          for n in range(count)]


# ------------------------------------------------------------------- Videos ---


def _write_video(out_dir, stem, number, digit, digit_image, rng, *, seconds,
                 size, scratch):
  # Variety for downstream code, tied to the number (not the digit) so that
  # every class gets some: 1 in 10 has no audio, 1 in 7 is wider than tall.
  has_audio = number % 10 != (number // 10) % 10
  width = _even(size * 5 // 4) if number % 7 == 3 else _even(size)
  height = _even(size)

  frames, colour, motion = _render_video(digit_image, rng, seconds, width,
                                         height)
  caption = rng.choice(VIDEO_CAPTIONS).format(
      name=DIGIT_NAMES[digit], colour=colour, motion=motion)
  path = f"{stem}.mp4"

  command = [
      ffmpeg_binary(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
      "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
      "-r", str(FPS), "-i", "pipe:0"]
  if has_audio:
    wav_path = os.path.join(scratch, stem.replace("/", "-") + ".wav")
    soundfile.write(wav_path, _digit_tone(digit, rng, seconds),
                    VIDEO_SAMPLE_RATE, subtype="PCM_16")
    command += ["-i", wav_path, "-map", "0:v", "-map", "1:a",
                "-c:a", "aac", "-b:a", "48k"]
  command += [
      "-c:v", "libx264", "-preset", "fast", "-crf", "23", "-pix_fmt", "yuv420p",
      "-threads", "1",
      # Drop x264's SEI message, which embeds its version and options.
      "-bsf:v", "filter_units=remove_types=6",
      "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
      "-map_metadata", "-1",
      os.path.join(out_dir, path)]
  # run() feeds stdin and drains stdout/stderr together, so ffmpeg never
  # blocks on a full pipe.
  result = subprocess.run(command, input=frames.tobytes(), capture_output=True,
                          timeout=FFMPEG_TIMEOUT_S, check=False)
  if has_audio:
    os.remove(wav_path)
  if result.returncode != 0:
    raise RuntimeError(f"ffmpeg failed to write {path}:\n"
                       f"{result.stderr.decode(errors='replace')[-2000:]}")
  return path, {"label": DIGIT_NAMES[digit], "caption": caption, "colour": colour,
                "motion": motion}


def _render_video(digit_image, rng, seconds, width, height):
  """(frames uint8 [T, H, W, 3], colour name, motion in words)."""
  n_frames = max(1, round(seconds * FPS))
  # Large enough that the digit stays legible at the loader's small buckets.
  sprite = round(min(width, height) * VIDEO_SPRITE)
  alpha = _upscale(digit_image, sprite)[..., None]
  colour = rng.choice(list(COLOURS))
  background = _background(rng, height, width)
  positions, motion = _path(rng, n_frames, width - sprite, height - sprite)

  frames = np.empty((n_frames, height, width, 3), np.uint8)
  for t, (x, y) in enumerate(positions):
    frame = background.copy()
    patch = frame[y:y + sprite, x:x + sprite]
    frame[y:y + sprite, x:x + sprite] = (
        patch * (1 - alpha) + np.array(COLOURS[colour]) * alpha)
    frames[t] = np.clip(np.rint(frame), 0, 255)
  return frames, colour, motion


def _path(rng, n_frames, max_x, max_y):
  """Top-left sprite positions (ints within [0, max]) and the motion in words."""
  if rng.random() < 0.3:
    # Bounce off the edges at a constant speed.
    position = rng.uniform(0, 1, 2) * (max_x, max_y)
    angle = rng.uniform(0, 2 * np.pi)
    velocity = rng.uniform(1.5, 3.5) * np.array([np.cos(angle), np.sin(angle)])
    positions = []
    for _ in range(n_frames):
      positions.append(position.copy())
      position += velocity
      for axis, limit in enumerate((max_x, max_y)):
        if position[axis] < 0:
          position[axis], velocity[axis] = -position[axis], -velocity[axis]
        elif position[axis] > limit:
          position[axis] = 2 * limit - position[axis]
          velocity[axis] = -velocity[axis]
    positions = np.clip(np.rint(positions), 0, (max_x, max_y)).astype(int)
    return positions, "bouncing around"

  # A straight line from one side to the other, with some drift across.
  direction = rng.choice(["to the left", "to the right", "up", "down"])
  start, end = rng.uniform(0, 0.2), rng.uniform(0.8, 1)
  if direction in ("to the left", "up"):  # image y grows downwards
    start, end = 1 - start, 1 - end
  across = rng.uniform(0, 1)
  across_end = np.clip(across + rng.uniform(-0.2, 0.2), 0, 1)
  if direction in ("to the left", "to the right"):
    first, last = (start, across), (end, across_end)
  else:
    first, last = (across, start), (across_end, end)
  fraction = np.linspace(0, 1, n_frames)[:, None]
  positions = (np.array(first) + fraction * (np.array(last) - first))
  positions = np.rint(positions * (max_x, max_y)).astype(int)
  return positions, f"moving {direction}"


def _digit_tone(digit, rng, seconds):
  """A mono chord whose pitch names the digit: 220 Hz * 2**(digit / 10)."""
  t = np.arange(round(seconds * VIDEO_SAMPLE_RATE)) / VIDEO_SAMPLE_RATE
  wave = _chord(_pitch(digit), t, rng.uniform(0, 2 * np.pi))
  fade = np.clip(np.minimum(t, t[-1] - t) / 0.02, 0, 1)  # no clicks
  wave = rng.uniform(0.2, 0.6) * wave * fade
  return np.clip(wave + rng.normal(0, 0.01, len(t)), -1, 1)


# ------------------------------------------------------------------- Images ---


def _write_image(out_dir, stem, number, digit, digit_image, rng, *, size,
                 **unused_options):
  # Cycle the file kinds the pipeline must convert to RGB.
  kind = ("jpeg", "rgb", "gray", "rgba")[number % 4]
  colour = "white" if kind == "gray" else rng.choice(list(COLOURS))

  sprite = round(size * rng.uniform(*IMAGE_SPRITE))
  x, y = rng.integers(0, size - sprite, 2, endpoint=True)
  alpha = np.zeros((size, size, 1))
  alpha[y:y + sprite, x:x + sprite, 0] = _upscale(digit_image, sprite)
  background = _background(rng, size, size)
  pixels = background * (1 - alpha) + np.array(COLOURS[colour]) * alpha
  image = PIL.Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))

  if kind == "jpeg":
    path = f"{stem}.jpg"
    image.save(os.path.join(out_dir, path), quality=90)
  else:
    path = f"{stem}.png"
    if kind == "gray":
      image = image.convert("L")
    elif kind == "rgba":
      # A partly transparent background under an opaque digit.
      opacity = np.maximum(alpha[..., 0], rng.uniform(0.1, 0.6))
      image.putalpha(PIL.Image.fromarray(np.rint(opacity * 255).astype(np.uint8)))
    image.save(os.path.join(out_dir, path))

  templates = IMAGE_CAPTIONS
  if kind != "gray":
    templates += COLOUR_IMAGE_CAPTIONS
  caption = rng.choice(templates).format(name=DIGIT_NAMES[digit], colour=colour)
  return path, {"caption": caption, "label": DIGIT_NAMES[digit], "colour": colour}


# -------------------------------------------------------------------- Audio ---


def _write_audio(out_dir, stem, number, digit, digit_image, rng,
                 **unused_options):
  """digit + 1 beeps at the digit's pitch; the sklearn sample is not heard."""
  sample_rate = AUDIO_SAMPLE_RATES[number % 3]
  path = f"{stem}.wav" if number % 2 == 0 else f"{stem}.flac"
  stereo = number % 5 == 2

  duration = rng.uniform(1.0, 2.0)
  t = np.arange(round(duration * sample_rate)) / sample_rate
  beeps = digit + 1
  period = min(0.15, (duration - 0.2) / beeps)  # leaves >= 0.2 s of margin
  length = 0.6 * period
  first = rng.uniform(0.05, duration - beeps * period - 0.05)
  envelope = np.zeros_like(t)
  for k in range(beeps):
    inside = (t >= first + k * period) & (t < first + k * period + length)
    envelope[inside] = np.hanning(inside.sum())
  wave = rng.uniform(0.2, 0.6) * envelope * _chord(
      _pitch(digit), t, rng.uniform(0, 2 * np.pi))
  wave = np.clip(wave + rng.normal(0, 0.005, len(t)), -1, 1)
  if stereo:
    pan = rng.uniform(0.2, 1.37)  # radians; 0.785 is the centre
    wave = np.stack([wave * np.cos(pan), wave * np.sin(pan)], axis=1)

  soundfile.write(os.path.join(out_dir, path), wave, sample_rate,
                  subtype="PCM_16")
  return path, {"label": DIGIT_NAMES[digit]}


# ------------------------------------------------------------------- Shared ---


def _pitch(digit):
  # A tenth of an octave per digit: distinct, and all within one octave.
  return 220.0 * 2 ** (digit / 10)


def _chord(frequency, t, phase):
  """The fundamental with two softer harmonics, peak amplitude below 1."""
  return (np.sin(2 * np.pi * frequency * t + phase)
          + 0.5 * np.sin(4 * np.pi * frequency * t + phase)
          + 0.25 * np.sin(6 * np.pi * frequency * t + phase)) / 1.75


def _upscale(digit_image, size):
  """The [0, 1] 8x8 digit resized smoothly to size x size, as [0, 1] floats."""
  small = PIL.Image.fromarray(np.rint(digit_image * 255).astype(np.uint8))
  return np.asarray(small.resize((size, size), PIL.Image.BILINEAR)) / 255.0


# A few dark background colours: a colour of its own per example would let a
# model tell training examples apart by their background alone.
BACKGROUNDS = ((20, 20, 24), (10, 24, 48), (40, 20, 36))


def _background(rng, height, width):
  """A dark colour with light pixel noise, as floats [H, W, 3]."""
  base = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], np.float64)
  noise = rng.normal(0, 8, (height, width, 3))
  return np.clip(base + noise, 0, 255)


def _even(n):
  return n - n % 2  # yuv420p needs even dimensions


# ----------------------------------------------------------------- Datasets ---

# The demo's media are small (64 px, 10 fps); storing them larger is waste.
SETTINGS = {"video_short_side": 64, "image_short_side": 64, "video_fps": 10.0}
# The demo corpus's splits, in one place: examples per modality, all splits together,
# and the share of each held out. Train 320 videos, 800 images, 160 sounds; validation
# and test 80, 200 and 40 each. Images are cheap to make and teach the shared vision
# tower and the text tower the digits' names.
SIZES = {"videos": 480, "images": 1200, "audio": 240}
HELD_OUT = {"validation": 1 / 6, "test": 1 / 6}


def shared_tokenizer(manifests: dict[str, str], path: str) -> str:
  """Trains one tokenizer on the captions of every train manifest, writes it to path.

  The model has one text embedding table, so every dataset a training run
  reads text from must use the same token ids: each dataset training its own
  tokenizer would give "seven" one id in the videos and another in the
  images, and the trainer refuses such datasets. Built from the train splits
  only, with the digits' names and the registry's prompts, as a build's own
  tokenizer is.
  """
  captions: dict[str, int] = {}
  for key, manifest in sorted(manifests.items()):
    if not key.endswith("-train"):
      continue
    with open(manifest) as f:
      for line in f:
        caption = json.loads(line).get("caption")
        if caption:
          caption = text.normalize(caption)
          captions[caption] = captions.get(caption, 0) + 1
  texts = text.corpus_texts(sorted(captions.items()), DIGIT_NAMES,
                            sorted(registry.PROMPTS.values()))
  vocab_size = build_config.BuildConfig().vocab_size
  storage.write_atomic(path, text.train_tokenizer(texts, vocab_size, "bpe"))
  return path


def settings(corpus: str) -> dict:
  """The build options of the demo datasets whose corpus (and shared tokenizer) is in corpus."""
  return {**SETTINGS, "tokenizer": os.path.join(corpus, "tokenizer.model")}


def write_corpus(corpus: str, *, videos: int = SIZES["videos"], images: int = SIZES["images"],
                 audio: int = SIZES["audio"], seed: int = 0) -> dict[str, str]:
  """generate(), then one tokenizer for all its manifests (settings(corpus)); the manifests."""
  manifests = generate(corpus, videos=videos, images=images, audio=audio, held_out=HELD_OUT,
                       seed=seed)
  shared_tokenizer(manifests, settings(corpus)["tokenizer"])
  return manifests


def build_all(root: str, workers: int | None = None, log=print,
              videos: int = SIZES["videos"]) -> dict[str, dict]:
  """Generates the corpus under root/corpus (`videos` of all splits; the rest the demo's) and
  builds root/data/<modality>; returns summaries."""
  corpus = os.path.join(root, "corpus")
  start = time.monotonic()
  manifests = write_corpus(corpus, videos=videos)
  log(f"demo corpus: {corpus} ({time.monotonic() - start:.1f} s)")
  summaries = {}
  for key, manifest in manifests.items():
    modality, split = key.rsplit("-", 1)
    plan = build.prepare("jsonl", manifest, os.path.join(root, "data", modality), split,
                         (settings(corpus),))
    summaries[key] = build.run(plan, workers=workers)
  return summaries


# ---------------------------------------------------------------------- Run ---

# Configs are Python files in train/configs; this one expects the datasets build_all writes.
DEMO_CONFIG = os.path.join(os.path.dirname(impax.train.__file__), "configs", "demo.py")
# The demo's goal: zero-shot top-1 on its test videos, 75% on average over seeds with none
# under 65% (benchmarks/README.md, "The demo's recipe, diagnosed"); one run prints it beside.
ZERO_SHOT_TASK, ZERO_SHOT_GOAL = "video_text", 0.75


def config_for(root: str) -> str:
  """The demo's training config on the datasets under root/data, as FILE:ARG."""
  return f"{DEMO_CONFIG}:{os.path.join(root, 'data')}"
