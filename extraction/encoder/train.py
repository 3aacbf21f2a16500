"""Fine-tuning: fixed seed, progress with ETA, step checkpoints with resume, model + manifest.

Output (``out_dir``): ``encoder.safetensors`` (all weights but the frozen word embeddings,
which are reloaded from the base model), ``names.json`` (training-corpus surface -> name
pairs for normalisation) and ``manifest.json`` (base-model and corpus hashes, the config,
dev scores per epoch, training time). ``checkpoint.pt`` exists only while a run is
unfinished; ``resume=True`` continues from it bit-for-bit in batch order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from extraction.api import EngineInfo
from extraction.corpus import Record
from extraction.encoder.backend import (
    ENCODER_TASK_VERSION,
    INDEX_FILE,
    MANIFEST,
    NAMES_FILE,
    EncoderBackend,
    software_version,
)
from extraction.encoder.config import TrainConfig
from extraction.encoder.data import (
    MarkedExample,
    NerExample,
    epoch_plan,
    examples,
    marked_batch,
    marked_targets,
    mask_of,
    ner_targets,
    pad,
)
from extraction.encoder.model import (
    WEIGHTS_FILE,
    MultiTaskEncoder,
    add_lora,
    base_hash,
    base_name,
    build_model,
    load_base,
    save_weights,
    trained_keys,
    trained_state,
)
from extraction.encoder.normalize import Normalizer, corpus_names, merged_lexicon
from extraction.errors import ModelLoadError
from extraction.evaluate import Predictions, score_sentences
from extraction.lexicon import Lexicon

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
Progress = Callable[[str], None]


@dataclass
class TrainState:
    epoch: int = 0
    batch: int = 0  # batches of ``epoch`` already done
    step: int = 0
    elapsed_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    dev: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    model: MultiTaskEncoder
    tokenizer: Any
    state: TrainState
    manifest: dict[str, Any]
    out_dir: Path


def records_hash(records: Sequence[Record]) -> str:
    """Content hash of a corpus (canonical JSON lines), independent of file paths."""
    digest = hashlib.sha256()
    for rec in records:
        digest.update(json.dumps(rec.to_json(), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _optimizer(model: MultiTaskEncoder, cfg: TrainConfig) -> torch.optim.AdamW:
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in enc}
    heads = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
    enc_lr = cfg.learning_rate * (10 if cfg.lora_rank else 1)  # LoRA's usual larger rate
    return torch.optim.AdamW(
        [{"params": enc, "lr": enc_lr}, {"params": heads, "lr": cfg.learning_rate * 10}],
        weight_decay=cfg.weight_decay,
    )


def _schedule(opt: torch.optim.Optimizer, total: int, cfg: TrainConfig) -> Any:
    warm = max(1, int(total * cfg.warmup_fraction))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def batch_loss(model: MultiTaskEncoder, kind: str, items: Sequence[Any], pad_id: int) -> Tensor:
    """Cross-entropy of one batch: NER tokens, or UC + RE of marked sequences."""
    ce = nn.functional.cross_entropy
    if kind == "ner":
        ner: Sequence[NerExample] = items
        rows = [x.input_ids for x in ner]
        logits = model.ner_logits(pad(rows, pad_id), mask_of(rows))
        return ce(logits.flatten(0, 1), ner_targets(ner).flatten(), ignore_index=-100)
    marked: Sequence[MarkedExample] = items
    batch = marked_batch([x.marked for x in marked], pad_id)
    status, relations = marked_targets(marked)
    states = model.marked_states(batch.input_ids, batch.markers, batch.attention_mask)
    loss = ce(model.uc_logits(states, batch.sup_heads), status)
    if len(relations):
        logits = model.re_logits(states, batch.pair_rows, batch.pair_sup, batch.pair_ev)
        loss = loss + ce(logits, relations)
    return loss


# Settings a checkpoint cannot be resumed under if they changed (shapes, schedule, data).
RESUME_KEYS = ("lora_rank", "lora_alpha", "epochs", "batch_size", "max_length", "seed")


def _save_checkpoint(
    path: Path, model: MultiTaskEncoder, opt: Any, sched: Any, st: TrainState, cfg: TrainConfig
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "config": {k: getattr(cfg, k) for k in RESUME_KEYS},
            "model": trained_state(model),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": torch.get_rng_state(),
            "state": dataclasses.asdict(st),
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a crash mid-write never leaves a torn checkpoint


def _load_checkpoint(
    path: Path, model: MultiTaskEncoder, opt: Any, sched: Any, cfg: TrainConfig
) -> TrainState:
    data = torch.load(path, weights_only=True)
    saved = data.get("config", {})
    changed = [k for k in RESUME_KEYS if k in saved and saved[k] != getattr(cfg, k)]
    if changed or not saved:  # no config: a checkpoint from before LoRA training existed
        what = ", ".join(changed) or "older format"
        raise ModelLoadError(
            f"{path} was written with other training settings ({what}): rerun with the same "
            "settings, or delete it to start over"
        )
    if set(data["model"]) != trained_keys(model):
        raise ModelLoadError(f"{path}: the checkpoint does not fit this model")
    model.load_state_dict(data["model"], strict=False)
    opt.load_state_dict(data["optimizer"])
    sched.load_state_dict(data["scheduler"])
    torch.set_rng_state(data["rng"])
    return TrainState(**data["state"])


def dev_scores(backend: EncoderBackend, dev: Sequence[Record]) -> dict[str, Any]:
    """End-to-end headline scores of the in-training model on the dev set."""
    results = backend.predict([r.text for r in dev])
    preds = Predictions(
        by_id={
            r.id: dataclasses.replace(res.record, id=r.id)
            for r, res in zip(dev, results, strict=True)
        }
    )
    rep = score_sentences(list(dev), preds)
    scores = {
        "ner_strict_f1": rep["ner"]["strict"]["f1"],
        "ner_relaxed_f1": rep["ner"]["relaxed"]["f1"],
        "normalization_accuracy": rep["ner"]["normalization_accuracy"],
        "re_e2e_macro_f1": rep["re"]["end_to_end"]["macro_f1"],
        "re_found_macro_f1": rep["re"]["found_entities"]["macro_f1"],
        "uc_e2e_accuracy": rep["uc"]["end_to_end"]["accuracy"],
        "uc_found_accuracy": rep["uc"]["found_entities"]["accuracy"],
        "te_strict_f1": rep["te"]["strict"]["f1"],
    }
    return {k: None if v is None else round(float(v), 4) for k, v in scores.items()}


@dataclass
class _Run:
    """Everything one training run threads through its loop."""

    model: MultiTaskEncoder
    tokenizer: Any
    cfg: TrainConfig
    ner: list[NerExample]
    marked: list[MarkedExample]
    opt: Any
    sched: Any
    total: int
    ckpt: Path
    progress: Progress
    prior_s: float  # training time of earlier (interrupted) runs
    started: float = field(default_factory=time.monotonic)
    start_step: int = 0

    def elapsed(self) -> float:
        return self.prior_s + time.monotonic() - self.started

    def eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        left = (time.monotonic() - self.started) / done * (self.total - step)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def checkpoint(self, st: TrainState) -> None:
        snapshot = dataclasses.replace(st, elapsed_s=self.elapsed())
        _save_checkpoint(self.ckpt, self.model, self.opt, self.sched, snapshot, self.cfg)


def _step(run: _Run, kind: str, idx: list[int], st: TrainState) -> None:
    items = [run.ner[i] for i in idx] if kind == "ner" else [run.marked[i] for i in idx]
    loss = batch_loss(run.model, kind, items, int(run.tokenizer.pad_token_id))
    run.opt.zero_grad()
    torch.autograd.backward(loss)
    nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.opt.step()
    run.sched.step()
    st.batch += 1
    st.step += 1
    st.losses.append(round(float(loss.detach()), 5))


def _run_epoch(run: _Run, st: TrainState) -> bool:
    """Train the rest of ``st.epoch``; False when ``max_steps`` stopped the run early."""
    cfg = run.cfg
    plan = epoch_plan(
        [len(x.input_ids) for x in run.ner],
        [len(x.marked.input_ids) for x in run.marked],
        cfg.batch_size, cfg.seed, st.epoch,
    )  # fmt: skip
    run.model.train()
    for kind, idx in plan[st.batch :]:
        if cfg.max_steps is not None and st.step >= cfg.max_steps:
            return False
        _step(run, kind, idx, st)
        if st.step % 20 == 0:
            recent = st.losses[-20:]
            run.progress(
                f"epoch {st.epoch + 1}/{cfg.epochs} step {st.step}/{run.total} "
                f"loss {sum(recent) / len(recent):.4f} ETA {run.eta(st.step)}"
            )
        if st.step % cfg.checkpoint_every == 0:
            run.checkpoint(st)
    return True


def _prepare(
    base_dir: Path, train_records: Sequence[Record], out_dir: Path, cfg: TrainConfig,
    progress: Progress, resume: bool,
) -> tuple[_Run, TrainState]:  # fmt: skip
    torch.manual_seed(cfg.seed)
    tokenizer, encoder = load_base(base_dir)
    model = build_model(tokenizer, encoder)
    if cfg.lora_rank:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    ner, marked = examples(tokenizer, train_records, cfg.max_length)
    per_epoch = -(-len(ner) // cfg.batch_size) + -(-len(marked) // cfg.batch_size)
    # The schedule follows the epochs even when ``max_steps`` stops early, so a short run
    # resumed with a larger ``max_steps`` takes exactly the steps of an uninterrupted run.
    opt = _optimizer(model, cfg)
    sched = _schedule(opt, per_epoch * cfg.epochs, cfg)
    total = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / CHECKPOINT
    st = TrainState()
    if resume and ckpt.is_file():
        st = _load_checkpoint(ckpt, model, opt, sched, cfg)
        progress(f"resuming from {ckpt} at epoch {st.epoch + 1}, step {st.step}")
    run = _Run(model, tokenizer, cfg, ner, marked, opt, sched, total, ckpt, progress, st.elapsed_s)
    run.start_step = st.step
    progress(
        f"training on {len(ner)} sentences / {len(marked)} supplement mentions: "
        f"{total} steps of {cfg.batch_size}, {cfg.threads} thread(s)"
    )
    return run, st


def train(
    base_dir: Path,
    train_records: Sequence[Record],
    dev_records: Sequence[Record],
    out_dir: Path,
    cfg: TrainConfig,
    lexicon: Lexicon | None = None,
    embed: Any = None,
    progress: Progress = log.info,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune the multi-task model on ``train_records``; score each epoch on ``dev_records``.

    ``embed`` (texts -> normalised vectors) enables nearest-entry normalisation in the dev
    scores; ``resume`` continues an interrupted run from its checkpoint in ``out_dir``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(base_dir, train_records, dev_records, out_dir, cfg, lexicon, embed,
                      progress, resume)  # fmt: skip
    finally:
        torch.set_num_threads(threads)  # process-wide: leave it as the caller had it


def _train(
    base_dir: Path, train_records: Sequence[Record], dev_records: Sequence[Record],
    out_dir: Path, cfg: TrainConfig, lexicon: Lexicon | None, embed: Any,
    progress: Progress, resume: bool,
) -> TrainResult:  # fmt: skip
    run, st = _prepare(base_dir, train_records, out_dir, cfg, progress, resume)
    names = corpus_names(train_records)
    normalizer = Normalizer(merged_lexicon(lexicon, names), embed, cache=out_dir / INDEX_FILE)
    info = EngineInfo("encoder", software_version(), ENCODER_TASK_VERSION, "training", "training")
    backend = EncoderBackend(run.model, run.tokenizer, normalizer, info)
    while st.epoch < cfg.epochs:
        if not _run_epoch(run, st):
            break
        if dev_records:
            scores = {"epoch": st.epoch + 1, **dev_scores(backend, dev_records)}
            st.dev.append(scores)
            progress(f"dev after epoch {st.epoch + 1}: {json.dumps(scores)}")
        st.epoch += 1
        st.batch = 0
        run.checkpoint(st)
    st.elapsed_s = run.elapsed()
    if embed is not None:
        normalizer.index()  # cache the surface vectors next to the model for fast loading
    manifest = _write_outputs(run, st, base_dir, train_records, dev_records, names, out_dir)
    if manifest["completed"]:
        run.ckpt.unlink(missing_ok=True)
    else:  # stopped by max_steps: keep a checkpoint that ``resume`` can continue from
        run.checkpoint(st)
    progress(f"saved {out_dir / WEIGHTS_FILE} after {st.step} steps in {st.elapsed_s:.0f}s")
    return TrainResult(run.model, run.tokenizer, st, manifest, out_dir)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_outputs(
    run: _Run, st: TrainState, base_dir: Path, train_records: Sequence[Record],
    dev_records: Sequence[Record], names: dict[str, str], out_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    import transformers

    weights = save_weights(run.model, out_dir)
    (out_dir / NAMES_FILE).write_text(
        json.dumps(names, ensure_ascii=False, indent=0, sort_keys=True), encoding="utf-8"
    )
    manifest: dict[str, Any] = {
        "format": "dsfhir-encoder/1",
        "task_version": ENCODER_TASK_VERSION,
        "software_version": software_version(),
        "base_model": base_name(base_dir),
        "base_model_dir": str(base_dir),
        "base_model_sha256": base_hash(base_dir),
        "weights_file": weights.name,
        "weights_sha256": _file_hash(weights),
        "train_corpus_sha256": records_hash(train_records),
        "dev_corpus_sha256": records_hash(dev_records),
        "train_records": len(train_records),
        "dev_records": len(dev_records),
        "examples": {"ner": len(run.ner), "marked": len(run.marked)},
        "config": dataclasses.asdict(run.cfg),
        "steps": st.step,
        "completed": st.epoch >= run.cfg.epochs,
        "training_seconds": round(st.elapsed_s, 1),
        "final_loss": round(sum(st.losses[-50:]) / max(1, len(st.losses[-50:])), 4),
        "dev": st.dev,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
