"""Locating the external media tools the pipelines run."""

import functools
import os
import shutil


@functools.cache
def ffmpeg_binary() -> str:
  """The ffmpeg to run: $IMPAX_FFMPEG, then the one on PATH, then imageio-ffmpeg's.

  Debian's apt package is preferred (it has every encoder the demo corpus
  uses); imageio-ffmpeg ships a static binary for machines without root.
  """
  if path := os.environ.get("IMPAX_FFMPEG"):
    return path
  if path := shutil.which("ffmpeg"):
    return path
  try:
    import imageio_ffmpeg  # the fallback where no ffmpeg is installed
  except ImportError as e:
    raise RuntimeError(
        "ffmpeg not found: install it (apt-get install ffmpeg) or `pip install"
        " imageio-ffmpeg`, or point $IMPAX_FFMPEG at a binary") from e
  return imageio_ffmpeg.get_ffmpeg_exe()
