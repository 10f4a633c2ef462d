"""The perceptual hash of an image or a clip (pipelines/media.py `_phash`) is imagehash.phash's
value, computed without its copies and hex string: dedup compares fingerprints across builds."""

import imagehash
import numpy as np
from PIL import Image

from impax.pipelines import media


def imagehash_value(thumbnail: np.ndarray) -> int:
  """What media.py computed before: imagehash.phash of the rounded pixels, as signed int64."""
  value = int(str(imagehash.phash(Image.fromarray(thumbnail.round().astype(np.uint8), "L"))), 16)
  return value - (1 << 64) if value >= 1 << 63 else value


def test_phash_is_imagehash_phash():
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:32, 0:32].astype(np.float32)
  thumbnails = [rng.uniform(0, 255, (32, 32)).astype(np.float32) for _ in range(200)]
  thumbnails += [np.full((32, 32), v, np.float32) for v in (0.0, 127.5, 255.0)]  # ties
  thumbnails += [x * 8, y * 8, (x + y) * 4, 255 - x * 8, np.where((x // 4 + y // 4) % 2, 250.0, 3.0)]
  # Means of frames, as video_fingerprint hashes: values between integers.
  thumbnails += [np.mean([rng.uniform(0, 255, (32, 32)) for _ in range(3)], axis=0).astype(np.float32)
                 for _ in range(50)]
  values = [media._phash(t) for t in thumbnails]
  assert values == [imagehash_value(t) for t in thumbnails]
  assert len(set(values)) > 200 and all(-(1 << 63) <= v < 1 << 63 for v in values)
