"""Parameter and FLOP counts of the presets, and the `model info` command."""

import json
import subprocess
import sys

import jax
import pytest

from impax.model import get_config, info


@pytest.mark.parametrize("preset,paper", [("S", 21e6), ("B", 86e6),
                                          ("L", 306e6)])
def test_encoder_sizes_match_the_paper(preset, paper):
  counts = info.info(get_config(preset))
  assert abs(counts["encoder_params"] / paper - 1) < 0.03, counts[
      "encoder_params"]
  cfg = get_config(preset)
  w, f = cfg.width, cfg.mlp_dim
  # Bias-free: 4 attention matrices, 2 MLP matrices, 2 LayerNorm scales.
  assert counts["encoder_params"] == cfg.depth * (4 * w * w + 2 * w * f +
                                                  2 * w) + w


def test_counts_come_from_the_real_parameters(tiny, tiny_params):
  counts = info.info(tiny)
  assert counts["total_params"] == sum(
      x.size for x in jax.tree.leaves(tiny_params))
  assert counts["params_by_module"]["text_embed"] == (
      tiny.vocab_size + tiny.text_pos_buckets) * tiny.width


def test_moe_adds_experts_but_not_active_params_or_flops():
  dense, sparse = info.info(get_config("B")), info.info(get_config("MoE-B"))
  one_expert = 2 * 768 * 3072
  assert sparse["expert_params"] == 6 * 16 * one_expert
  assert sparse["total_params"] == (dense["total_params"] +
                                    sparse["expert_params"] - 6 * one_expert +
                                    6 * 768 * 16 +  # Routers.
                                    12 * 2 * 64)  # QK-LayerNorm scales.
  assert sparse["active_params_per_token"] == pytest.approx(
      dense["active_params_per_token"], rel=0.01)
  assert sparse["flops_per_token"] == pytest.approx(dense["flops_per_token"],
                                                    rel=0.01)
  # Forward FLOPs are about twice the multiplied parameters, plus attention.
  attention = 12 * 4 * 256 * 768
  assert dense["flops_per_token"] == pytest.approx(
      2 * dense["active_params_per_token"] + attention, rel=0.01)
  assert dense["train_flops_per_token"] == 3 * dense["flops_per_token"]
  layout = [layer["mlp"] for layer in sparse["layers"]]
  assert layout == ["dense"] * 6 + ["moe"] * 6
  assert sparse["layers"][-1]["num_experts"] == 16
  assert sparse["layers"][-1]["router"] == "expert_choice"


def test_token_choice_counts_top_k_experts_per_token():
  top2 = info.info(get_config("MoE-S", router="token_choice", top_k=2))
  top1 = info.info(get_config("MoE-S", router="token_choice", top_k=1))
  one_expert = 2 * 384 * 1536
  assert top2["active_params_per_token"] - top1[
      "active_params_per_token"] == 6 * one_expert


def test_cli_module_prints_json():
  result = subprocess.run(
      [sys.executable, "-m", "impax.cli", "model", "info", "tiny", "--tokens", "1024"],
      capture_output=True, text=True, check=True, timeout=120)
  data = json.loads(result.stdout)
  for key in ("total_params", "active_params_per_token", "flops_per_token",
              "layers"):
    assert key in data
  assert [layer["mlp"] for layer in data["layers"]] == [
      "dense", "dense", "moe", "moe"]
  assert data["preset"] == "tiny" and data["tokens_per_sequence"] == 1024


def test_conv_stem_flops_are_counted_per_token():
  plain = info.info(get_config("tiny"))
  stem = info.info(get_config("tiny", vision_stem=(16, 32)))
  # A token covers 2 x 8 x 8 = 128 pixels: 32 positions after the first
  # stride-2 layer (3 -> 16 channels), 8 after the second (16 -> 32), then the
  # patch kernel takes 8 x 32 values to the width (64).
  conv = 2 * 32 * 9 * 3 * 16 + 2 * 8 * 9 * 16 * 32
  assert stem["flops_per_token"] - plain["flops_per_token"] == (
      conv + 2 * 8 * 32 * 64 - 2 * 128 * 3 * 64)
  assert stem["params_by_module"]["vision_embed"] - plain["params_by_module"][
      "vision_embed"] == 9 * 3 * 16 + 9 * 16 * 32 + 8 * 32 * 64 - 128 * 3 * 64
