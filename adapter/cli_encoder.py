"""``dsfhir encoder train|extract|info``: the fine-tuned encoder backend.

``train`` fine-tunes the configured base encoder ([encoder] base; default all-MiniLM-L6-v2)
into [encoder] model_dir (default models/ds-encoder, the shipped model: pass ``--out`` for
experiments so it is not overwritten). ``extract`` runs a backend (the
encoder, or the lexicon rules for the comparison row) over a JSONL of ``{"id", "text"}``
through the shared note pipeline, writing records that ``dsfhir evaluate`` scores at
either level. :func:`encoder_backend` is the composition hook for ``adapter.engine``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TypeVar

from adapter.config import Settings
from adapter.engine import encoder_base_dir, encoder_model_dir
from extraction.corpus import load_corpus
from extraction.encoder.config import TrainConfig
from extraction.lexicon import Lexicon

log = logging.getLogger(__name__)
DEFAULT_TRAIN = Path("data/corpus/train.jsonl")
DEFAULT_DEV = Path("data/corpus/dev.jsonl")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enc = sub.add_parser(
        "encoder",
        help="encoder backend: train, info (extract with: dsfhir extract --backend encoder)",
    )
    enc_sub = enc.add_subparsers(dest="encoder_command", required=True, metavar="ACTION")
    train = enc_sub.add_parser(
        "train", help="fine-tune the multi-task encoder (LoRA, CPU, ~35 min)"
    )
    _train_args(train)
    train.set_defaults(handler=train_encoder)
    info = enc_sub.add_parser("info", help="print the trained model's manifest summary")
    info.set_defaults(handler=_info)


def _train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--train", type=Path, default=DEFAULT_TRAIN, help="training corpus")
    p.add_argument("--dev", type=Path, default=DEFAULT_DEV, help="dev corpus (scored per epoch)")
    p.add_argument("--out", type=Path, help="model dir (default: [encoder] model_dir)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: [encoder] threads x [extraction] workers)",
    )
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="without --out, replace the configured (shipped) model if it is complete",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        help="train LoRA adapters of this rank instead of every weight (0: full tuning)",
    )
    p.add_argument("--lora-alpha", type=int)


def project_lexicon(settings: Settings) -> Lexicon | None:
    """The configured lexicon; the encoder also works without one (corpus names only)."""
    path = settings.extraction.lexicon
    if path is None or not settings.resolve(path).is_file():
        log.warning("no supplement lexicon at %s: normalising with corpus names only", path)
        return None
    return Lexicon.load(settings.resolve(path))


T = TypeVar("T")


def given(value: T | None, default: T) -> T:
    """A flag's value, or ``default`` when it was left unset (``dsfhir train`` flags are
    shared by both backends and default to None)."""
    return default if value is None else value


def _config(args: argparse.Namespace, settings: Settings) -> TrainConfig:
    d = TrainConfig()
    return TrainConfig(
        epochs=int(given(args.epochs, d.epochs)),
        batch_size=given(args.batch_size, d.batch_size),
        learning_rate=given(args.lr, d.learning_rate),
        max_length=given(args.max_length, d.max_length),
        seed=given(args.seed, d.seed),
        threads=args.threads or settings.single_process_threads(settings.encoder.threads),
        checkpoint_every=given(args.checkpoint_every, d.checkpoint_every),
        max_steps=args.max_steps,
        lora_rank=given(getattr(args, "lora_rank", None), d.lora_rank),
        lora_alpha=given(getattr(args, "lora_alpha", None), d.lora_alpha),
    )


def train_encoder(args: argparse.Namespace, settings: Settings) -> int:
    """``dsfhir encoder train`` and ``dsfhir train --backend encoder``."""
    from extraction.encoder.normalize import LazyEmbedder
    from extraction.encoder.train import train

    cfg = _config(args, settings)
    base = encoder_base_dir(settings)
    out = args.out or encoder_model_dir(settings)
    if args.out is None and not args.overwrite and not args.resume and _complete(out):
        print(refuse_overwrite(out), file=sys.stderr)
        return 1
    dev = load_corpus(args.dev or DEFAULT_DEV)
    result = train(
        base, load_corpus(args.train), dev, out, cfg,
        lexicon=project_lexicon(settings), embed=LazyEmbedder(base),
        progress=lambda msg: log.info("%s", msg), resume=args.resume,
    )  # fmt: skip
    manifest = result.manifest
    print(f"encoder saved to {out} ({manifest['steps']} steps, {manifest['training_seconds']}s)")
    if manifest["dev"]:
        print(json.dumps(manifest["dev"][-1], indent=2))
    return 0


def _info(args: argparse.Namespace, settings: Settings) -> int:
    from extraction.encoder.backend import read_manifest

    manifest = read_manifest(encoder_model_dir(settings))
    keep = ("base_model", "base_model_sha256", "weights_sha256", "train_corpus_sha256",
            "steps", "completed", "training_seconds", "config", "created")  # fmt: skip
    summary = {k: manifest.get(k) for k in keep}
    summary["dev"] = manifest.get("dev", [])[-1:] or None
    print(json.dumps(summary, indent=2))
    return 0


def _complete(model_dir: Path) -> bool:
    from extraction.encoder.backend import MANIFEST, read_manifest

    return (model_dir / MANIFEST).is_file() and bool(read_manifest(model_dir).get("completed"))


def refuse_overwrite(path: Path) -> str:
    """Why a training run will not replace the configured model without being asked."""
    return (
        f"{path} already holds a trained model (the shipped one, unless configured "
        "otherwise): pass --out DIR to train elsewhere, or --overwrite to replace it"
    )
