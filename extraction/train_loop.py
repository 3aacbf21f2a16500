"""The torch side of LoRA training: model set-up, the step loop, checkpoints and resume."""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extraction.errors import ModelLoadError
from extraction.training import Encoded, TrainOptions, batches, collate, format_eta, options_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    resumed_from: int


def _lora_model(base_dir: Path, opts: TrainOptions) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(opts.seed)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, local_files_only=True
    )
    if opts.init_adapter:
        return _warm_start(model, Path(opts.init_adapter))
    config = LoraConfig(
        r=opts.rank,
        lora_alpha=opts.alpha,
        lora_dropout=opts.dropout,
        target_modules=list(opts.targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _warm_start(model: Any, init: Path) -> Any:
    """The base with an existing (shared) adapter loaded as the trainable starting point."""
    import torch
    from peft import PeftModel

    if not (init / "adapter_config.json").is_file():
        raise ModelLoadError(f"--init {init}: not a (shared) LoRA adapter directory")
    peft_model = PeftModel.from_pretrained(model, init, is_trainable=True)
    for param in peft_model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)  # shipped adapters are stored in fp16
    return peft_model


def _schedule(optimizer: Any, total: int, warmup: float) -> Any:
    import torch

    warm = max(1, int(total * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.05, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _save_checkpoint(
    ckpt: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    step: int,
    losses: list[float],
    fingerprint: str,
) -> None:
    import torch
    from peft import get_peft_model_state_dict

    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / "state.pt.tmp"
    torch.save(
        {
            "adapter": get_peft_model_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": step,
            "losses": losses,
        },
        tmp,
    )
    tmp.replace(ckpt / "state.pt")  # atomic: a kill mid-write leaves the previous one
    (ckpt / "fingerprint.json").write_text(json.dumps({"fingerprint": fingerprint}))


def _load_checkpoint(
    ckpt: Path, model: Any, optimizer: Any, scheduler: Any, fingerprint: str
) -> tuple[int, list[float]]:
    import torch
    from peft import set_peft_model_state_dict

    state_file, fp_file = ckpt / "state.pt", ckpt / "fingerprint.json"
    if not state_file.is_file() or not fp_file.is_file():
        return 0, []
    if json.loads(fp_file.read_text()).get("fingerprint") != fingerprint:
        log.warning("checkpoint in %s is from a different run configuration; starting over", ckpt)
        return 0, []
    state = torch.load(state_file, weights_only=False)
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), list(state["losses"])


def train_lora(
    base_dir: Path,
    data: Sequence[Encoded],
    opts: TrainOptions,
    out_dir: Path,
    ckpt_dir: Path,
    fingerprint: str,
    pad_id: int,
    max_steps: int | None = None,
) -> TrainResult:
    """Train, checkpointing as it goes; resume from ``ckpt_dir`` when it matches ``fingerprint``.

    ``max_steps`` stops early (the schedule is still the full run's), e.g. to ship a run cut
    short: rerun the same command with it and the adapter is saved from the checkpoint."""
    import torch

    model = _lora_model(base_dir, opts)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(data) / opts.batch_size)
    total = max(1, math.ceil(per_epoch * opts.epochs))
    scheduler = _schedule(optimizer, total, opts.warmup)
    start, losses = _load_checkpoint(ckpt_dir, model, optimizer, scheduler, fingerprint)
    end = min(total, max_steps) if max_steps else total
    random.seed(opts.seed)
    began = time.monotonic()
    for step in range(start, end):
        epoch, pos = divmod(step, per_epoch)
        batch = collate(data, batches(data, opts, epoch)[pos], pad_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        _progress(step + 1, end, start, began, losses)
        if (step + 1) % opts.checkpoint_every == 0 or step + 1 == end:
            _save_checkpoint(ckpt_dir, model, optimizer, scheduler, step + 1, losses, fingerprint)
    _save_adapter(model, out_dir, opts)
    window = max(1, min(20, len(losses) // 5 or 1))
    return TrainResult(
        steps=max(start, end),
        seconds=time.monotonic() - began,
        first_loss=sum(losses[:window]) / window if losses else 0.0,
        last_loss=sum(losses[-window:]) / window if losses else 0.0,
        resumed_from=start,
    )


def _progress(done: int, total: int, start: int, began: float, losses: list[float]) -> None:
    elapsed = time.monotonic() - began
    rate = elapsed / max(1, done - start)
    recent = losses[-20:]
    sys.stderr.write(
        f"\rtrain step {done}/{total}  loss {sum(recent) / len(recent):.4f}  "
        f"elapsed {format_eta(elapsed)}  eta {format_eta(rate * (total - done))}   "
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _save_adapter(model: Any, out_dir: Path, opts: TrainOptions) -> None:
    """Save the LoRA weights in fp16 (half the size; loading casts them back)."""
    import torch
    from safetensors.torch import load_file, save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    weights = out_dir / "adapter_model.safetensors"
    tensors = {k: v.to(torch.float16) for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    (out_dir / "train_options.json").write_text(json.dumps(options_json(opts), indent=1))
