"""Batched greedy decoding and single-pass label scoring over a loaded causal LM.

Where the time goes on a CPU, and what is done about it: the task instruction's KV cache is
computed once per call and shared by every batch; the cache has room reserved for the
answer (extraction.kv_cache); a row leaves the batch once its answer is closed JSON. Each
of these leaves the outputs unchanged (tests/test_llm.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from extraction.llm import LoadedModel

# Shorter common prefixes are not worth a separate forward pass and a cache copy per batch.
MIN_SHARED_PREFIX = 8


class Generator:
    """Batched greedy decoding and label scoring over one loaded model."""

    def __init__(
        self,
        loaded: LoadedModel,
        batch_size: int = 32,
        max_new_tokens: int = 96,
        score_batch_size: int = 8,
        share_prefix: bool = True,
        stop_on_json: bool = True,
    ) -> None:
        self.loaded = loaded
        self.batch_size = batch_size
        self.score_batch_size = score_batch_size
        self.share_prefix = share_prefix
        self.stop_on_json = stop_on_json
        self.max_new_tokens = max_new_tokens
        from extraction.kv_cache import full_attention_only

        # the reserved cache stands in for full-attention layers only (decided once)
        self._reserved_cache = full_attention_only(loaded.model.config)
        self.eos_id = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.computed_tokens = 0  # prompt tokens actually run (the shared prefix once per call)
        # Where the time goes: prompt prefill (generation), decoding, label scoring.
        self.seconds: dict[str, float] = {"prefill": 0.0, "decode": 0.0, "score": 0.0}

    @staticmethod
    def _batches(rows: Sequence[Sequence[int]], size: int) -> list[list[int]]:
        """Index batches sorted by prompt length, so padding stays small."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        ids: list[list[int]] = self.loaded.tokenizer(list(prompts), add_special_tokens=False)[
            "input_ids"
        ]
        self.prompt_tokens += sum(len(row) for row in ids)
        return ids

    def _new_cache(self, reserve: int) -> Any:
        """An empty KV cache: with ``reserve`` tokens of room per layer where the model allows
        it (extraction.kv_cache), else transformers' own."""
        from transformers.cache_utils import DynamicCache

        from extraction.kv_cache import reserved_cache

        if self._reserved_cache:
            return reserved_cache(reserve)
        return DynamicCache(config=self.loaded.model.config)

    def _prefix(self, rows: Sequence[Sequence[int]], part: str) -> tuple[int, Any]:
        """The token prefix every prompt of a call shares (the task's instruction) and its KV
        cache, computed once and reused by every batch: prompts of one task differ only after
        it, and prefill is the compute-bound part on a CPU."""
        import torch

        shared = min(len(r) for r in rows) - 1  # each prompt keeps a token to score from
        first = rows[0]
        for row in rows[1:]:
            shared = next((n for n in range(shared) if row[n] != first[n]), shared)
        if shared < MIN_SHARED_PREFIX or not self.share_prefix or len(rows) == 1:
            return 0, None
        began = time.perf_counter()
        ids = torch.tensor([first[:shared]], device=self.loaded.device)
        with torch.inference_mode():
            out = self.loaded.model(
                input_ids=ids, past_key_values=self._new_cache(0), use_cache=True, logits_to_keep=1
            )
        self.computed_tokens += shared
        self.seconds[part] += time.perf_counter() - began
        return shared, out.past_key_values

    def _prefill(self, rows: list[Sequence[int]], shared: int, cache: Any, reserve: int) -> Any:
        """Forward pass over a batch of prompts (left-padded after the shared prefix), into a
        cache with room for ``reserve`` more tokens per row."""
        import torch

        from extraction.kv_cache import batch_copy

        width = max(len(r) for r in rows) - shared
        pad = self.loaded.tokenizer.pad_token_id or 0
        ids = [[pad] * (width - len(r) + shared) + list(r[shared:]) for r in rows]
        tail = [[0] * (width - len(r) + shared) + [1] * (len(r) - shared) for r in rows]
        dev = self.loaded.device
        tail_mask = torch.tensor(tail, device=dev)
        past = self._new_cache(reserve) if cache is None else batch_copy(cache, len(rows), reserve)
        self.computed_tokens += sum(len(r) - shared for r in rows)
        head = torch.ones((len(rows), shared), dtype=tail_mask.dtype, device=dev)
        mask = torch.cat([head, tail_mask], dim=1)
        # Positions count real tokens only (left padding sits between prefix and prompt).
        positions = (shared + tail_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.loaded.model(
            input_ids=torch.tensor(ids, device=dev),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,  # only the last position's vocabulary projection is needed
        )
        return out, mask

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy continuation of each prompt, stopped at <|im_end|> or the token cap."""
        outputs = [""] * len(prompts)
        if not prompts:
            return outputs
        rows = self._tokenize(prompts)
        shared, cache = self._prefix(rows, "prefill")
        for idx in self._batches(rows, self.batch_size):
            texts = self._greedy([rows[i] for i in idx], shared, cache)
            for i, text in zip(idx, texts, strict=True):
                outputs[i] = text
        return outputs

    def _greedy(self, rows: list[Sequence[int]], shared: int, cache: Any) -> list[str]:
        """Greedy decoding; a row that has finished leaves the batch (and the KV cache), so
        short answers stop costing compute while the longest one is still being written."""
        import torch

        seqs: list[list[int]] = [[] for _ in rows]
        with torch.inference_mode():
            began = time.perf_counter()
            out, mask = self._prefill(rows, shared, cache, self.max_new_tokens)
            self.seconds["prefill"] += time.perf_counter() - began
            began = time.perf_counter()
            nxt = out.logits[:, -1, :].argmax(dim=-1)
            past, alive = out.past_key_values, torch.arange(len(rows), device=mask.device)
            for _ in range(self.max_new_tokens):
                keep = self._append(seqs, alive, nxt)
                if len(keep) == 0:
                    break
                if len(keep) < len(alive):
                    past.batch_select_indices(keep)
                    alive, nxt, mask = alive[keep], nxt[keep], mask[keep]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                nxt = self._next(nxt, mask, past)
        self.seconds["decode"] += time.perf_counter() - began
        return [self._decode(seq) for seq in seqs]

    def _append(self, seqs: list[list[int]], alive: Any, nxt: Any) -> Any:
        """Add each live row's token; the indices (into ``alive``) of rows still writing."""
        import torch

        done = []
        for row, token in zip(alive.tolist(), nxt.tolist(), strict=True):
            seqs[row].append(token)
            closed = self.stop_on_json and self._closed(seqs[row])
            done.append(token == self.eos_id or closed)
        return (~torch.tensor(done, device=nxt.device)).nonzero().flatten()

    def _next(self, nxt: Any, mask: Any, past: Any) -> Any:
        """One decoding step: the next token of every live row."""
        step = {
            "input_ids": nxt[:, None],
            "attention_mask": mask,
            "position_ids": mask.sum(-1, keepdim=True) - 1,
            "past_key_values": past,
            "use_cache": True,
        }
        return self.loaded.model(**step).logits[:, -1, :].argmax(dim=-1)

    def _closed(self, seq: list[int]) -> bool:
        """Whether the answer is already a complete JSON value (no need to wait for the end
        token): checked only when the last token closes a bracket or brace."""
        last: str = self.loaded.tokenizer.decode(seq[-1:])
        if not last.rstrip().endswith(("]", "}")):
            return False
        try:
            json.loads(self.loaded.tokenizer.decode(seq))
        except ValueError:
            return False
        return True

    def _decode(self, seq: list[int]) -> str:
        cut = seq.index(self.eos_id) if self.eos_id in seq else len(seq)
        self.generated_tokens += cut
        text: str = self.loaded.tokenizer.decode(seq[:cut], skip_special_tokens=True)
        return text

    def option_logits(self, prompts: Sequence[str], options: Sequence[int]) -> list[list[float]]:
        """For each prompt, the next-token logits of the option tokens (one forward pass)."""
        import torch

        scores: list[list[float]] = [[] for _ in prompts]
        if not prompts:
            return scores
        option_ids = torch.tensor(list(options), device=self.loaded.device)
        rows = self._tokenize(prompts)
        shared, cache = self._prefix(rows, "score")
        for idx in self._batches(rows, self.score_batch_size):
            began = time.perf_counter()
            with torch.inference_mode():
                out, _ = self._prefill([rows[i] for i in idx], shared, cache, 0)
            self.seconds["score"] += time.perf_counter() - began
            picked = out.logits[:, -1, :].index_select(1, option_ids).float().tolist()
            for i, row in zip(idx, picked, strict=True):
                scores[i] = row
        return scores

    def choose(
        self, prompts: Sequence[str], options: Sequence[int], offsets: Sequence[float] = ()
    ) -> list[int]:
        """For each prompt, the index of the option the model ranks highest next, after adding
        the per-option ``offsets`` (label-prior correction, see extraction.calibration)."""
        shift = list(offsets) or [0.0] * len(options)
        picks = []
        for row in self.option_logits(prompts, options):
            shifted = [value + offset for value, offset in zip(row, shift, strict=True)]
            picks.append(max(range(len(shifted)), key=shifted.__getitem__))
        return picks
