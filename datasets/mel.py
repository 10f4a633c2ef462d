"""The mel spectrogram, once: a filterbank, a power spectrogram, and the two products of them.

    power = mel.power_spectrogram(padded, n_fft=400, hop=160, window=np.hanning(400))
    bands = mel.filters(16000, n_fft=400, n_mels=128, fmin=80.0, fmax=7600.0)  # [mels, bins]

Two readers of sound use it, each with its own settings:
  - the loader's log-mel input (datasets/decode.py `log_mel`): 25 ms windows
    every 10 ms, the product with the filterbank as a sparse matrix;
  - the build's audio fingerprints (pipelines/media.py): librosa's
    melspectrogram (`melspectrogram`, `power_to_db`), whose bits are stored in
    shards.

librosa's import costs a process more CPU (numba, scipy.signal) than decoding
a clip (benchmarks/README.md, "The fixed cost after librosa left the build"),
so these are its steps in numpy: the same float operations and memory
layouts, the same bytes as librosa 0.11's (tests/pipelines/test_audio_features.py
and tests/datasets/test_loader.py check them).
"""

import functools
import threading

import numpy as np
from threadpoolctl import ThreadpoolController


def hann(n: int) -> np.ndarray:
  """The periodic Hann window, float64: scipy.signal.get_window("hann", n, fftbins=True),
  computed as scipy does (librosa's window)."""
  fac = np.linspace(-np.pi, np.pi, n + 1, dtype=np.float64)
  window = np.zeros(n + 1, dtype=np.float64)
  for k, a in enumerate(np.asarray([0.5, 0.5], dtype=np.float64)):
    window += a * np.cos(k * fac)
  return window[:-1]


def _hz_to_mel(hz: float) -> float:
  mel = hz / (200.0 / 3)
  if hz >= 1000.0:
    mel = 1000.0 / (200.0 / 3) + np.log(hz / 1000.0) / (np.log(6.4) / 27.0)
  return mel


@functools.lru_cache(maxsize=8)
def filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
  """The mel filterbank float32 [n_mels, 1 + n_fft // 2]: librosa.filters.mel(sr, n_fft,
  n_mels, fmin, fmax), Slaney's scale and area normalization."""
  weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
  fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
  mels = np.linspace(_hz_to_mel(np.float64(fmin)), _hz_to_mel(np.float64(fmax)), n_mels + 2)
  mel_hz = (200.0 / 3) * mels
  log = mels >= 1000.0 / (200.0 / 3)
  mel_hz[log] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log] - 1000.0 / (200.0 / 3)))
  fdiff = np.diff(mel_hz)
  ramps = np.subtract.outer(mel_hz, fft_hz)
  for i in range(n_mels):
    weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
  weights *= (2.0 / (mel_hz[2:n_mels + 2] - mel_hz[:n_mels]))[:, np.newaxis]
  return weights


@functools.lru_cache(maxsize=8)
def sparse_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float):
  """`filters` as a scipy sparse matrix (at 16 kHz, 400 bins and 128 mels, 370 of its 25728
  weights are nonzero).

  For a product beside a training step: numpy's dense product goes through
  OpenBLAS, whose threads spin against XLA's for the same cores; the sparse
  product is single-threaded and several times faster alone."""
  import scipy.sparse  # only audio tasks need it
  return scipy.sparse.csr_array(filters(sample_rate, n_fft, n_mels, fmin, fmax))


def power_spectrogram(samples: np.ndarray, n_fft: int, hop: int, window: np.ndarray,
                      frames: int | None = None) -> np.ndarray:
  """float32 [frames, 1 + n_fft // 2]: |rfft(window * samples[i*hop : i*hop + n_fft])|^2 of
  the first `frames` windows (default: every whole one) of the samples as given (pad
  them first). A float32 window keeps the transform in float32; a float64 one computes
  it in float64 and rounds the spectrum to complex64, as librosa does."""
  windows = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop][:frames]
  return np.abs(np.fft.rfft(windows * window).astype(np.complex64, copy=False)) ** 2


def melspectrogram(samples: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int,
                   fmin: float, fmax: float) -> np.ndarray:
  """The mel power spectrogram [n_mels, frames] of float32 samples (at least n_fft of
  them), as librosa.feature.melspectrogram computes it (center=True, pad_mode="constant",
  a periodic Hann window, Slaney mel bands)."""
  power = power_spectrogram(np.pad(samples, n_fft // 2), n_fft, hop, hann(n_fft)).T
  # On one BLAS thread: after each call OpenBLAS's other threads spin waiting for work, as
  # much CPU as the rest of the build's own work on a video (benchmarks/README.md, "Threads
  # for small builds, one BLAS thread").
  # The product's last bits depend on the thread count, so one thread also makes them the
  # same on every machine (the fingerprints, thresholds of it, matched in every clip tried).
  with _BLAS_LOCK, _blas().limit(limits=1, user_api="blas"):
    return np.einsum("...ft,mf->...mt", power,
                     filters(sample_rate, n_fft, n_mels, fmin, fmax), optimize=True)


# The limit is process-wide: the lock keeps two threads of a worker from restoring each
# other's setting.
_BLAS_LOCK = threading.Lock()


@functools.cache
def _blas() -> ThreadpoolController:
  return ThreadpoolController()  # finds the loaded BLAS libraries: once per process


def power_to_db(power: np.ndarray, top_db: float, amin: float = 1e-10) -> np.ndarray:
  """librosa.power_to_db(power, ref=np.max, top_db=top_db)."""
  db = 10.0 * np.log10(np.maximum(amin, power))
  db -= 10.0 * np.log10(np.maximum(amin, np.max(power)))
  return np.maximum(db, db.max() - top_db)
