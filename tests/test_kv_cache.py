"""The reserved KV cache (extraction.kv_cache) holds exactly what transformers' growing
cache holds, through every operation decoding uses, and leaves model outputs unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from extraction import kv_cache
from extraction.generate import Generator
from extraction.kv_cache import ReservedLayer, batch_copy, reserved_cache
from extraction.llm import load_model


def _kv(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, length, 8, generator=gen), torch.randn(
        batch, 3, length, 8, generator=gen
    )


def _same(a: DynamicLayer, b: DynamicLayer) -> None:
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert a.get_seq_length() == b.get_seq_length()


def test_reserved_layer_matches_the_growing_layer_step_by_step() -> None:
    plain, reserved = DynamicLayer(), ReservedLayer(reserve=4)
    for layer in (plain, reserved):
        layer.update(*_kv(1, 5, 0))  # a one-row prefix ...
        layer.batch_repeat_interleave(3)  # ... copied for a batch of three
    _same(plain, reserved)
    rows = 3
    for step in range(9):  # grows past the reserve twice
        new = _kv(rows, 1, step + 1)
        out_p, out_r = plain.update(*new), reserved.update(*new)
        assert torch.equal(out_p[0], out_r[0]) and torch.equal(out_p[1], out_r[1])
        if step == 4:
            rows = 2
            keep = torch.tensor([0, 2])
            plain.batch_select_indices(keep)
            reserved.batch_select_indices(keep)
        _same(plain, reserved)
    plain.crop(-2)
    reserved.crop(-2)
    _same(plain, reserved)
    new = _kv(2, 1, 99)  # writes after a crop land where the crop left off
    plain.update(*new)
    reserved.update(*new)
    _same(plain, reserved)
    with pytest.raises(ValueError, match="cache holds"):
        reserved.update(*_kv(3, 1, 5))  # a batch of another size is refused, not broadcast
    reserved.reset()
    assert reserved.get_seq_length() == 0
    reserved.update(*_kv(1, 2, 7))
    assert reserved.keys.shape == (1, 3, 2, 8)


def test_batch_copy_gives_each_row_the_prefix_and_the_reserve() -> None:
    prefix = reserved_cache(0)
    prefix.update(*_kv(1, 6, 3), layer_idx=0)
    batch = batch_copy(prefix, 4, reserve=10)
    layer = batch.layers[0]
    assert layer.keys.shape == (4, 3, 6, 8) and layer.reserve == 10
    assert torch.equal(layer.keys[2], prefix.layers[0].keys[0])
    assert prefix.layers[0].keys.shape[0] == 1  # the shared prefix itself is untouched


def test_generation_and_scores_are_those_of_the_growing_cache(
    base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model(base_dir, None)
    tok = loaded.tokenizer
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
        + "<|im_start|>assistant\n"
        for text in ("List two vitamins.", "Name a fruit.", "What is magnesium used for?")
    ]
    options = [tok.convert_tokens_to_ids(t) for t in ("Yes", "No")]

    def run() -> tuple[list[str], list[list[float]]]:
        gen = Generator(loaded, batch_size=2, max_new_tokens=24, score_batch_size=2)
        return gen.generate(prompts), gen.option_logits(prompts, options)

    reserved = run()
    monkeypatch.setattr(kv_cache, "reserved_cache", lambda reserve: DynamicCache())
    growing = run()
    assert reserved[0] == growing[0]
    flat = [x for row in reserved[1] for x in row]
    assert flat == pytest.approx([x for row in growing[1] for x in row], abs=1e-4)
    assert any(len(text) > 10 for text in reserved[0])
