"""Captions and labels: normalization, the SentencePiece tokenizer, the label vocabulary."""

import functools
import io
import os
import tempfile
import unicodedata

import sentencepiece as spm

# Ids the trained tokenizer reserves; the loader pads with PAD_ID.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class TextError(Exception):
  """A caption or label cannot be used; the message is for the failures file."""


def normalize(text) -> str:
  """NFKC, whitespace collapsed; raises TextError for what cannot be a caption."""
  if not isinstance(text, str):
    raise TextError(f"caption {text!r} is a {type(text).__name__}, not text")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise TextError(f"caption {text!r} cannot be encoded as UTF-8: {e.reason}") from None
  text = " ".join(unicodedata.normalize("NFKC", text).split())
  if not text:
    raise TextError("caption is empty")
  return text


def corpus_texts(captions: list[tuple[str, int]], labels, prompts) -> list[tuple[str, int]]:
  """(text, count) a tokenizer is trained on: normalized captions with their counts,
  label names and label prompts, sorted so training is deterministic."""
  counts = dict(captions)
  for label in labels:
    for text in (label, *(p.format(label=label) for p in prompts)):
      counts[text] = counts.get(text, 0) + 1
  return sorted(counts.items())


def train_tokenizer(texts: list[tuple[str, int]], vocab_size: int, model_type: str) -> bytes:
  """A SentencePiece model trained on (text, count) pairs, deterministically.

  Counts go in as SentencePiece's TSV input, so a caption repeated a million
  times weighs a million without a million lines. One thread, no shuffling.
  """
  if not texts:
    raise ValueError("the corpus has no captions or labels to train a tokenizer on")
  model = io.BytesIO()
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "texts.tsv")
    with open(path, "w", encoding="utf-8") as f:
      for text, count in texts:
        f.write(f"{text.replace(chr(9), ' ')}\t{count}\n")
    spm.SentencePieceTrainer.train(
        input=path, input_format="tsv", model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=2_000_000,
        minloglevel=2)
  # The model records its training file's path, a random temporary name: drop
  # it so the same texts give the same bytes.
  return _drop_training_input(model.getvalue())


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos, shift = pos + 1, shift + 7
    if byte < 0x80:
      return value, pos


def _encode_varint(value: int) -> bytes:
  out = bytearray()
  while True:
    out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
    value >>= 7
    if not value:
      return bytes(out)


def _fields(data: bytes):
  """(field number, raw bytes of the whole field) of a serialized message."""
  pos = 0
  while pos < len(data):
    start = pos
    key, pos = _varint(data, pos)
    kind = key & 7
    if kind == 0:
      _, pos = _varint(data, pos)
    elif kind == 1:
      pos += 8
    elif kind == 2:
      size, pos = _varint(data, pos)
      pos += size
    elif kind == 5:
      pos += 4
    else:
      raise ValueError(f"unexpected wire type {kind} in a SentencePiece model")
    yield key >> 3, data[start:pos]


def _drop_training_input(model: bytes) -> bytes:
  """ModelProto without trainer_spec.input (field 2, then 1), by the wire format:
  sentencepiece's generated protobuf module needs a newer protobuf runtime."""
  out = bytearray()
  for number, raw in _fields(model):
    if number == 2:  # trainer_spec
      _, body_start = _varint(raw, 0)
      size, body_start = _varint(raw, body_start)
      spec = b"".join(r for n, r in _fields(raw[body_start:]) if n != 1)
      raw = raw[:1] + _encode_varint(len(spec)) + spec
    out += raw
  return bytes(out)


@functools.lru_cache(maxsize=4)
def tokenizer(model: bytes) -> spm.SentencePieceProcessor:
  return spm.SentencePieceProcessor(model_proto=model)


def tokenizer_info(model: bytes) -> dict:
  sp = tokenizer(model)
  return {"vocab_size": sp.vocab_size(), "pad_id": sp.pad_id(), "unk_id": sp.unk_id(),
          "bos_id": sp.bos_id(), "eos_id": sp.eos_id()}


def parse_labels_file(data: bytes, name: str) -> list[str]:
  labels = []
  # utf-8-sig: a byte-order mark (spreadsheet tools write one) is not part of the first label
  for number, line in enumerate(data.decode("utf-8-sig").splitlines(), 1):
    if line.strip():
      labels.append(line.strip())
  if len(set(labels)) != len(labels):
    raise ValueError(f"labels file {name} lists a label twice")
  return labels
