"""The bucketed loader on real shards built from the demo corpus."""

import collections
import functools
import json
import os
import shutil
import threading

import numpy as np
import pytest
from array_record.python import array_record_module

from batches import assert_batches_equal, take
from impax.datasets import decode, loader, mel, sampler
from impax.train import schedule

PATCHES = loader.Patches(tubelet=(2, 8, 8), spectrogram=(8, 8), waveform=64)


@pytest.fixture(scope="module")
def data(demo_data):
  return demo_data


def video_task(data, *, seed=7, train=True, labels=True, batch_multiple=1, **kw):
  """Video-text batches that also hold the label: a Loader with the task and its arguments bound."""
  defaults = dict(name="video_text", dataset=data["videos"], objective="contrastive",
                  modalities=("video", "text"),
                  buckets=(loader.Bucket(video=(4, 32, 32)), loader.Bucket(video=(8, 16, 16)),
                           loader.Bucket(video=(2, 48, 48), weight=2.0)),
                  token_budget=256, text_length=12)
  return functools.partial(loader.Loader, loader.Task(**{**defaults, **kw}), seed=seed,
                           train=train, labels=labels, batch_multiple=batch_multiple,
                           patches=PATCHES)




def shape_of(batch):
  """The shapes of what goes to a device: the host-side ids are not declared."""
  return {k: (v.shape, str(v.dtype)) for k, v in batch.items() if k not in loader.HOST_KEYS}


def test_every_batch_has_a_declared_shape_and_the_token_budget(data):
  data_loader = video_task(data)()
  declared = [{k: (tuple(s), d) for k, (s, d) in shapes.items()}
              for shapes in data_loader.batch_shapes()]
  assert len(declared) == 3
  seen = collections.Counter()
  for step, batch in enumerate(take(iter(data_loader), 30)):
    bucket = data_loader.bucket_of(step)
    assert shape_of(batch) == declared[bucket]
    seen[bucket] += 1
    assert batch["valid"].all()
    assert batch["id"].shape == batch["valid"].shape and all(batch["id"])
    assert batch["video"].dtype == np.uint8 and batch["video"].max() > 0
    assert (batch["text_mask"].sum(1) > 0).all()
    assert set(batch["label"].tolist()) <= set(range(len(data_loader.labels)))
  assert set(seen) == {0, 1, 2}
  # Buckets are drawn by weight (1, 1, 2), and known without reading data.
  drawn = collections.Counter(data_loader.bucket_of(s) for s in range(4000))
  assert abs(drawn[2] / 4000 - 0.5) < 0.03 and abs(drawn[0] / 4000 - 0.25) < 0.03
  for i in range(3):  # tokens per batch within half an example's tokens of the budget
    per_example = data_loader.tokens_per_example(data_loader.buckets[i])
    assert abs(data_loader.tokens_per_batch(i) - 256) <= per_example / 2


def test_batch_sizes_follow_the_budget_and_the_multiple(data):
  sizes = video_task(data, batch_multiple=4, token_budget=400)().batch_sizes
  # 4x32x32 -> 2*4*4 + 12 text = 44 tokens; 8x16x16 -> 4*2*2 + 12 = 28; 2x48x48 -> 36 + 12 = 48;
  # 400 tokens / 44 = 9.1 -> 8, / 28 = 14.3 -> 16, / 48 = 8.3 -> 8 (nearest multiple of 4)
  assert sizes == (8, 16, 8)


def test_same_seed_same_batches_any_worker_count(data):
  task = video_task(data)
  one = take(iter(task()), 6)
  it = iter(task(num_workers=2))
  two = take(it, 6)
  it.close()
  assert_batches_equal(one, two)
  other = take(iter(video_task(data, seed=8)()), 6)
  assert any(a["video"].shape != b["video"].shape or not np.array_equal(a["video"], b["video"])
             for a, b in zip(one, other))


def test_epochs_cover_every_example_once_in_a_new_order(data):
  task = loader.Task(name="ids", dataset=data["images"], objective="classification",
                     modalities=("image",), buckets=(loader.Bucket(image=(16, 16), batch_size=1),),
                     augment=decode.Augment(crop_area=(1.0, 1.0), crop_aspect=(1, 1), flip=False))
  data_loader = loader.Loader(task, seed=1, patches=PATCHES)
  n = data_loader.num_records
  shuffled = data_loader.sampler.shuffled
  first = [int(shuffled[p]) for p in range(n)]
  second = [int(shuffled[p]) for p in range(n, 2 * n)]
  assert sorted(first) == sorted(second) == list(range(n))
  assert first != second


def test_the_named_random_streams_keep_their_numbers(data):
  # Every run's draws are seeded by these numbers: a change would change its batches.
  assert [(s.name, int(s)) for s in sampler.Stream] == [("BUCKET", 1), ("EXAMPLE", 2),
                                                          ("SCHEDULE", 3), ("MIXTURE", 4)]
  data_loader = video_task(data)()
  weights = tuple(b.weight for b in data_loader.buckets)
  assert all(data_loader.bucket_of(s) == sampler.draw(weights, 7, sampler.Stream.BUCKET, s)
             for s in range(2100))
  assert all(schedule.task_of(s, "random", (1,) * 3, weights, 7)
             == sampler.draw(weights, 7, sampler.Stream.SCHEDULE, s) for s in range(2100))
  assert [data_loader.bucket_of(s) for s in range(50)] != [
      sampler.draw(weights, 7, sampler.Stream.SCHEDULE, s) for s in range(50)]


def test_a_record_source_replaces_the_shards(data):
  class InMemory:  # what a source other than local files gives the loader: records by position
    def __init__(self, records):
      self.records, self.reads = records, 0

    def __len__(self):
      return len(self.records)

    def read(self, positions):
      self.reads += 1
      return [self.records[p] for p in positions]

  task = video_task(data)
  split = task().dataset.shard_paths("train")
  records = [r for path in split for r in array_record_module.ArrayRecordReader(path).read_all()]
  source = InMemory(records)
  from_memory = task(source=source)
  assert from_memory.source is source
  assert_batches_equal(take(iter(task()), 5), take(iter(from_memory), 5))
  assert source.reads >= 5  # one batched read a step (and the prefetched ones)


def test_batch_sizes_from_the_budget_need_the_models_patch_sizes(data):
  with pytest.raises(loader.LoaderError, match="patch sizes"):
    loader.Loader(loader.Task(name="x", dataset=data["images"], objective="contrastive",
                              modalities=("image",), buckets=(loader.Bucket(image=(16, 16)),)))
  with pytest.raises(loader.LoaderError, match="spectrogram patch size"):
    loader.patch_tokens({"spectrogram": (1, 100, 128)}, loader.Patches(tubelet=(2, 8, 8)))
  sized = loader.Loader(loader.Task(name="x", dataset=data["images"], objective="contrastive",
                                    modalities=("image",),
                                    buckets=(loader.Bucket(image=(16, 16), batch_size=4),)))
  assert sized.batch_sizes == (4,)


def test_exact_resume_from_a_saved_state(data, tmp_path):
  task = video_task(data)
  uninterrupted = take(iter(task(num_workers=2)), 9)
  it = iter(task(num_workers=2))
  take(it, 4)
  state = json.loads(json.dumps(it.get_state()))  # survives a JSON round trip
  it.close()
  resumed_it = iter(task(num_workers=2))
  resumed_it.set_state(state)
  resumed = take(resumed_it, 5)
  resumed_it.close()
  assert_batches_equal(uninterrupted[4:], resumed)


def test_processes_read_disjoint_slices_that_cover_the_data(data):
  task = functools.partial(
      loader.Loader, loader.Task(name="ids", dataset=data["images"], objective="classification",
                                 modalities=("image",), buckets=(loader.Bucket(image=(16, 16)),),
                                 token_budget=4 * 8), seed=2, patches=PATCHES)
  full = task()
  n, size = full.num_records, full.batch_sizes[0]
  steps = n // size
  positions = {}
  for p in range(2):
    part = task(process_index=p, process_count=2)
    assert part.batch_shapes()[0]["image"][0][0] == size // 2
    positions[p] = [part.sampler.stream_start(s) + p * size // 2 + i
                    for s in range(steps) for i in range(size // 2)]
  assert not set(positions[0]) & set(positions[1])
  records = {int(full.sampler.shuffled[q]) for q in positions[0] + positions[1]}
  assert len(records) == steps * size  # distinct records, the epoch's first steps*size
  # and the processes' halves are the halves of the single-process batch
  whole = next(iter(full))
  halves = [next(iter(task(process_index=p, process_count=2)))
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])


def test_evaluation_is_deterministic_covers_the_split_and_pads(data):
  task = video_task(data, eval_split="test", train=False, eval_clips=3, objective="classification",
                    modalities=("video",), labels=False,
                    buckets=(loader.Bucket(video=(4, 32, 32), batch_size=4),))
  data_loader = task()
  n = data_loader.num_records
  batches = list(iter(data_loader))
  assert len(batches) == data_loader.num_batches == -(-n // 4)
  assert sum(int(b["valid"].sum()) for b in batches) == n
  assert batches[0]["video"].shape == (4, 3, 4, 32, 32, 3)
  if n % 4:
    assert not batches[-1]["valid"][n % 4:].any()
    assert not batches[-1]["video"][n % 4:].any()
  again = list(iter(task()))
  assert_batches_equal(batches, again)


def thread_nices() -> dict[int, int]:
  """{thread id: nice value} of this process's threads (field 19 of /proc/self/task/TID/stat)."""
  out = {}
  for tid in os.listdir("/proc/self/task"):
    try:
      stat = open(f"/proc/self/task/{tid}/stat").read()
    except FileNotFoundError:  # the thread ended
      continue
    out[int(tid)] = int(stat.rsplit(")", 1)[1].split()[16])
  return out


def new_thread_nices(it, before: dict[int, int]) -> list[int]:
  """Nice values of the threads that appeared while `it` made its first batch."""
  next(it)
  return [nice for tid, nice in thread_nices().items() if tid not in before]


def test_batches_are_made_at_a_lower_priority_than_the_caller(data):
  own = os.getpriority(os.PRIO_PROCESS, 0)
  lower = min(5, 19 - own)  # nice values stop at 19
  assert lower > 0, f"the test process runs at nice {own}: nothing lower to test"
  before = thread_nices()
  it = iter(video_task(data)(nice=lower))
  assert own + lower in new_thread_nices(it, before)  # the prefetch thread
  assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # not the caller
  it.close()
  # close() cancels the queued batches; the one in flight finishes on its own thread, and
  # threads it starts inherit its nice value: wait for it, or they count as new below.
  for thread in threading.enumerate():
    if thread.name.startswith("grain-prefetch"):
      thread.join(timeout=60)
  before = thread_nices()
  unchanged = iter(video_task(data)(nice=0))
  started = new_thread_nices(unchanged, before)
  assert started and set(started) == {own}
  unchanged.close()


def test_audio_as_waveform_and_log_mel(data):
  task = loader.Task(name="audio", dataset=data["audio"], objective="classification",
                     modalities=("waveform", "spectrogram"),
                     buckets=(loader.Bucket(audio_seconds=1.0, batch_size=4),))
  batch = next(iter(loader.Loader(task, seed=0, patches=PATCHES)))
  assert batch["waveform"].shape == (4, 16000) and batch["spectrogram"].shape == (4, 100, 128)
  assert np.abs(batch["waveform"]).max() > 0.01
  np.testing.assert_allclose(batch["spectrogram"][0], decode.log_mel(batch["waveform"][0]),
                             rtol=1e-5)


def test_log_mel_puts_a_tone_in_the_right_bins():
  t = np.arange(16000) / 16000
  low, high = (decode.log_mel(np.sin(2 * np.pi * f * t).astype(np.float32)) for f in (300, 3000))
  assert low.shape == (100, 128)
  assert low.mean(0).argmax() < high.mean(0).argmax()


def test_log_mel_is_the_mel_filterbank_of_the_power_spectrum():
  import librosa
  wave = np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32)
  windows = np.lib.stride_tricks.sliding_window_view(wave, 400)[::160]  # 48 whole windows
  power = np.abs(np.fft.rfft(windows * np.hanning(400), axis=-1)) ** 2
  bands = librosa.filters.mel(sr=16000, n_fft=400, n_mels=128, fmin=80.0, fmax=7600.0)
  np.testing.assert_array_equal(mel.filters(16000, 400, 128, 80.0, 7600.0), bands)  # librosa's
  expected = np.log(power @ bands.T + 1e-6)
  got = decode.log_mel(wave)
  assert got.shape == (50, 128) and got.dtype == np.float32
  np.testing.assert_allclose(got[:48], expected, rtol=1e-4, atol=1e-4)  # the last 2 are padded


def video_audio_task(dataset, **kw):
  return loader.Task(name="video_audio", dataset=dataset, objective="contrastive",
                     modalities=("video", "spectrogram"),
                     buckets=(loader.Bucket(video=(4, 32, 32), audio_seconds=0.5,
                                            batch_size=4),), **kw)


def records_with_audio(dataset, split):
  meta = json.loads(open(os.path.join(dataset, "metadata.json")).read())
  out, position = [], 0
  for shard in meta["splits"][split]["shards"]:
    reader = array_record_module.ArrayRecordReader(os.path.join(dataset, shard["path"]))
    for record in reader.read_all():
      if decode.parse(record).audio is not None:
        out.append(position)
      position += 1
    reader.close()
  return out, position


def test_video_with_its_audio_track(data):
  # The demo corpus holds a few videos without sound: a video-audio task never
  # draws them, so every slot of every batch is a real pair.
  with_audio, total = records_with_audio(data["videos"], "train")
  assert 0 < len(with_audio) < total
  data_loader = loader.Loader(video_audio_task(data["videos"]), patches=PATCHES)
  assert data_loader.num_records == len(with_audio)
  assert data_loader.left_out == {"audio": total - len(with_audio)}
  assert data_loader.sampler.records.tolist() == with_audio
  it = iter(data_loader)
  batches = take(it, data_loader.num_records // 4 + 2)  # past one epoch
  assert batches[0]["video"].shape == (4, 4, 32, 32, 3)
  assert batches[0]["spectrogram"].shape == (4, 50, 128)
  assert it.failed == 0 and all(b["valid"].all() for b in batches)
  for b in batches:
    assert (b["spectrogram"].std(axis=(1, 2)) > 0).all()
  # A task that does not read audio reads every record.
  video_only = video_task(data)()
  assert video_only.num_records == total and video_only.left_out == {}
  # Evaluation reads each record with sound once.
  evaluation = loader.Loader(video_audio_task(data["videos"], eval_split="test"), train=False,
                             patches=PATCHES)
  it = iter(evaluation)
  valid = sum(int(b["valid"].sum()) for b in it)
  assert valid == evaluation.num_records == len(records_with_audio(data["videos"], "test")[0])
  assert it.failed == 0


def test_a_dataset_without_the_list_of_lacking_records_counts_them_as_failures(data, tmp_path):
  # Built before metadata listed them: those records fail to decode, are skipped and counted.
  target = tmp_path / "videos"
  shutil.copytree(data["videos"], target)
  meta = json.loads((target / "metadata.json").read_text())
  for split in meta["splits"].values():
    del split["lacking"]
  (target / "metadata.json").write_text(json.dumps(meta))
  data_loader = loader.Loader(video_audio_task(str(target)), patches=PATCHES)
  assert data_loader.left_out == {}
  it = iter(data_loader)
  batches = take(it, data_loader.num_records // 4)
  silent = sum(int((~b["valid"]).sum()) for b in batches)
  assert silent > 0 and it.failed == silent
  assert set(it.failure_reasons) == {"DecodeError: record has no 'audio/pcm_s16le'"}


def test_text_from_label_prompts(data):
  import sentencepiece as spm
  task = loader.Task(name="audio_text", dataset=data["audio"], objective="contrastive",
                     modalities=("waveform", "text"), prompt="the sound of {label}.",
                     text_length=16, buckets=(loader.Bucket(audio_seconds=0.5, batch_size=4),))
  data_loader = loader.Loader(task, patches=PATCHES)
  names = {tuple(spm.SentencePieceProcessor(model_file=data_loader.dataset.tokenizer_path)
                 .encode(f"the sound of {n}.")) for n in data_loader.labels}
  batch = next(iter(data_loader))
  for tokens, mask in zip(batch["text"], batch["text_mask"]):
    assert tuple(tokens[mask == 1]) in names


def test_a_task_the_dataset_cannot_serve_is_refused(data):
  with pytest.raises(loader.LoaderError, match="reads video but split 'train'.*has no video"):
    loader.Loader(loader.Task(name="x", dataset=data["images"], objective="contrastive",
                              modalities=("video",), buckets=(loader.Bucket(video=(4, 16, 16)),)))
  with pytest.raises(loader.LoaderError, match="no captions"):
    loader.Loader(loader.Task(name="x", dataset=data["audio"], objective="contrastive",
                              modalities=("waveform", "text"),
                              buckets=(loader.Bucket(audio_seconds=1.0),)))
  with pytest.raises(loader.LoaderError, match="bucket 0: reads image"):
    loader.Loader(loader.Task(name="x", dataset=data["images"], objective="contrastive",
                              modalities=("image",), buckets=(loader.Bucket(video=(4, 16, 16)),)))
  with pytest.raises(loader.LoaderError, match="larger than"):
    loader.Loader(loader.Task(name="x", dataset=data["images"], objective="contrastive",
                              modalities=("image",),
                              buckets=(loader.Bucket(image=(16, 16), batch_size=10_000),)))


def test_corrupt_records_are_skipped_and_counted(data, tmp_path):
  target = tmp_path / "images"
  shutil.copytree(data["images"], target)
  meta = json.loads((target / "metadata.json").read_text())
  shard = meta["splits"]["train"]["shards"][0]
  path = str(target / shard["path"])
  reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
  records = [reader.read([i])[0] for i in range(reader.num_records())]
  reader.close()
  bad = {0: b"not a protobuf \xff\xff", 1: records[1].replace(b"\xff\xd8\xff", b"\x00\x00\x00", 1)}
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for i, r in enumerate(records):
    writer.write(bad.get(i, r))
  writer.close()
  task = loader.Task(name="x", dataset=str(target), objective="classification",
                     modalities=("image",), buckets=(loader.Bucket(image=(16, 16), batch_size=1),))
  data_loader = loader.Loader(task, seed=0, patches=PATCHES)
  it = iter(data_loader)
  batches = take(it, data_loader.num_records * 2)  # two epochs
  assert it.failed == 4 and sum(int((~b["valid"]).sum()) for b in batches) == 4
  assert any("not a tf.train.Example" in r for r in it.failure_reasons)
  assert any("JPEG" in r for r in it.failure_reasons)
  assert it.get_state()["failed"] == 4


def test_labels_as_index_or_multi_hot():
  assert decode.label([3, 1], 5, multi_label=False) == 3
  np.testing.assert_array_equal(decode.label([3, 1], 5, multi_label=True), [0, 1, 0, 1, 0])
  with pytest.raises(decode.DecodeError, match="outside the vocabulary"):
    decode.label([7], 5, multi_label=False)
