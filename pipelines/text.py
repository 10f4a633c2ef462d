"""Captions and labels: normalization, the SentencePiece tokenizer, the label vocabulary."""

import functools
import io
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


def corpus_texts(captions, labels, prompts) -> list[str]:
  """Texts a tokenizer is trained on: normalized captions, label names and label prompts."""
  texts = set(captions)
  for label in labels:
    texts.add(label)
    texts.update(p.format(label=label) for p in prompts)
  return sorted(texts)


def train_tokenizer(texts: list[str], vocab_size: int, model_type: str) -> bytes:
  """A SentencePiece model trained on `texts`, deterministically (one thread, no shuffling)."""
  if not texts:
    raise ValueError("the corpus has no captions or labels to train a tokenizer on")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      num_threads=1, shuffle_input_sentence=False, input_sentence_size=2_000_000,
      minloglevel=2)
  return model.getvalue()


@functools.lru_cache(maxsize=4)
def tokenizer(model: bytes) -> spm.SentencePieceProcessor:
  return spm.SentencePieceProcessor(model_proto=model)


def tokenizer_info(model: bytes) -> dict:
  sp = tokenizer(model)
  return {"vocab_size": sp.vocab_size(), "pad_id": sp.pad_id(), "unk_id": sp.unk_id(),
          "bos_id": sp.bos_id(), "eos_id": sp.eos_id()}


def parse_labels_file(data: bytes, name: str) -> list[str]:
  labels = []
  for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
    if line.strip():
      labels.append(line.strip())
  if len(set(labels)) != len(labels):
    raise ValueError(f"labels file {name} lists a label twice")
  return labels
