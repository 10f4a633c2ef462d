"""The demo's datasets share one tokenizer, so its text tasks can train one model together."""

import json
import os

import sentencepiece as spm

from impax.datasets import demo, prepared
from impax.pipelines import demo as demo_pipelines


def test_demo_datasets_share_one_tokenizer_that_knows_every_caption_word(demo_data):
  datasets = {m: prepared.open_dataset(path) for m, path in demo_data.items()}
  digests = {m: d.metadata["tokenizer"]["sha256"] for m, d in datasets.items()}
  assert len(set(digests.values())) == 1, digests
  assert not datasets["videos"].metadata["tokenizer"]["trained"]  # given, not trained per dataset
  tokenizer = spm.SentencePieceProcessor(model_file=datasets["videos"].tokenizer_path)
  # The words of the video and image captions and of the prompts are known to
  # it: whole pieces, no unknown id.
  raw = os.path.join(os.path.dirname(demo_data["videos"]), "raw")
  for name in ("videos-train", "images-train"):
    with open(os.path.join(raw, f"{name}.jsonl")) as f:
      for line in f:
        pieces = tokenizer.encode(json.loads(line)["caption"])
        assert tokenizer.unk_id() not in pieces
  for digit in demo.DIGIT_NAMES:
    for prompt in ("a video of {label}.", "a photo of {label}."):
      assert tokenizer.unk_id() not in tokenizer.encode(prompt.format(label=digit))
    assert len(tokenizer.encode(digit)) == 1


def test_the_flow_builds_the_demo_with_the_shared_tokenizer(tmp_path):
  from impax.flows.end_to_end import DemoCorpus, generate_demo_corpus
  corpora = generate_demo_corpus.fn(str(tmp_path), DemoCorpus(videos=10, images=10, audio=10))
  tokenizer = str(tmp_path / "corpus" / "tokenizer.model")
  assert os.path.getsize(tokenizer) > 0
  assert [c.options.tokenizer for c in corpora] == [tokenizer] * 3
  assert demo_pipelines.settings(str(tmp_path / "corpus"))["tokenizer"] == tokenizer
