"""The build's audio resampling and fingerprints, computed without librosa (whose
import costs each worker seconds), are the bytes librosa gives: records do not change."""

import librosa
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from impax.datasets import mel
from impax.pipelines import media


def _librosa_fingerprint(audio: media.Audio) -> list[int]:
  """media.audio_fingerprint as it was written with librosa."""
  samples = np.frombuffer(audio.pcm_s16le, "<i2").astype(np.float32) / 32768.0
  samples = samples[:round(media.AUDIO_MAX_FRAMES * media.AUDIO_HOP_SECONDS * audio.sample_rate)]
  if not np.any(samples):
    return []
  if samples.size < 2048:
    samples = np.pad(samples, (0, 2048 - samples.size))
  mel = librosa.feature.melspectrogram(
      y=samples, sr=audio.sample_rate, n_fft=2048,
      hop_length=round(audio.sample_rate * media.AUDIO_HOP_SECONDS),
      n_mels=media.AUDIO_BANDS, fmin=50.0, fmax=min(8000.0, audio.sample_rate / 2))
  db = librosa.power_to_db(mel, ref=np.max, top_db=60.0).T
  peak = db.max(axis=1, keepdims=True)
  bits = (db > peak - 20.0) & (peak > -30.0)
  values = (bits.astype(np.uint64) << np.arange(media.AUDIO_BANDS, dtype=np.uint64)).sum(
      axis=1, dtype=np.uint64)
  return values.view(np.int64)[:media.AUDIO_MAX_FRAMES].tolist()


def _signals(rate: int):
  rng = np.random.default_rng(rate)
  t = np.arange(int(rate * 2.5)) / rate
  chirp = 0.5 * np.sin(2 * np.pi * (200 + 900 * t) * t) * (1 + np.sin(3 * t)) / 2
  yield "noise", rng.normal(0, 0.2, int(rate * 1.3)).clip(-1, 1)
  yield "chirp", chirp  # over 32 frames: librosa computes its STFT in blocks
  yield "short", rng.normal(0, 0.3, 700).clip(-1, 1)  # under one FFT window
  yield "quiet tail", np.concatenate([chirp[:rate // 2], np.zeros(rate)])
  yield "long", rng.normal(0, 0.1, int(rate * 40)).clip(-1, 1)  # past AUDIO_MAX_FRAMES


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_mel_fingerprints_are_librosas(rate):
  np.testing.assert_array_equal(mel.hann(2048), librosa.filters.get_window("hann", 2048))
  fmax = min(8000.0, rate / 2)
  np.testing.assert_array_equal(
      mel.filters(rate, 2048, 64, 50.0, fmax),
      librosa.filters.mel(sr=rate, n_fft=2048, n_mels=64, fmin=50.0, fmax=fmax))
  for name, signal in _signals(rate):
    y = np.pad(signal.astype(np.float32), (0, max(0, 2048 - signal.size)))
    hop = round(rate * media.AUDIO_HOP_SECONDS)
    # On the one BLAS thread the build uses: the product's last bits depend on the count.
    with threadpool_limits(1, "blas"):
      theirs = librosa.feature.melspectrogram(y=y, sr=rate, n_fft=2048, hop_length=hop, n_mels=64,
                                              fmin=50.0, fmax=fmax)
    ours = mel.melspectrogram(y, rate, n_fft=2048, hop=hop, n_mels=64, fmin=50.0, fmax=fmax)
    np.testing.assert_array_equal(ours, theirs, err_msg=name)
    np.testing.assert_array_equal(mel.power_to_db(ours, top_db=60.0),
                                  librosa.power_to_db(theirs, ref=np.max, top_db=60.0),
                                  err_msg=name)
    pcm = np.round(signal * 32767).astype("<i2").tobytes()
    audio = media.Audio(pcm, rate)
    expected = _librosa_fingerprint(audio)  # on every BLAS thread, as the build ran before
    assert expected, name
    assert media.audio_fingerprint(audio) == expected, name


@pytest.mark.parametrize("rates", [(44100, 16000), (48000, 16000), (8000, 16000), (22050, 11025)])
def test_resampling_is_librosas(rates):
  rate, target = rates
  rng = np.random.default_rng(rate)
  for size in (1, 999, rate * 3 + 7):
    samples = rng.normal(0, 0.3, size).astype(np.float32)
    expected = librosa.resample(samples, orig_sr=rate, target_sr=target, res_type="soxr_hq")
    expected = np.clip(np.round(expected * 32767.0), -32768, 32767).astype("<i2").tobytes()
    assert media._resample(samples, rate, target).pcm_s16le == expected, size


def test_audio_that_is_not_finite_is_a_media_error():
  with pytest.raises(media.MediaError, match="not finite"):
    media._resample(np.array([0.1, np.nan, 0.2] * 100, np.float32), 44100, 16000)
