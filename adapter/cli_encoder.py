"""``dsfhir encoder train|extract|info``: the fine-tuned encoder backend.

``train`` fine-tunes the configured base encoder ([encoder] base; default all-MiniLM-L6-v2)
into [encoder] model_dir (default <state_dir>/encoder). ``extract`` runs a backend (the
encoder, or the lexicon rules for the comparison row) over a JSONL of ``{"id", "text"}``
through the shared note pipeline, writing records that ``dsfhir evaluate`` scores at
either level. :func:`encoder_backend` is the composition hook for ``adapter.engine``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from adapter.config import Settings
from adapter.errors import ConfigError
from extraction.corpus import load_corpus
from extraction.encoder.config import TrainConfig
from extraction.lexicon import Lexicon
from extraction.pipeline import NotePipeline, SentenceBackend

log = logging.getLogger(__name__)
DEFAULT_TRAIN = Path("data/corpus/train.jsonl")
DEFAULT_DEV = Path("data/corpus/dev.jsonl")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enc = sub.add_parser("encoder", help="encoder backend: train, extract, info")
    enc_sub = enc.add_subparsers(dest="encoder_command", required=True, metavar="ACTION")
    train = enc_sub.add_parser("train", help="fine-tune the multi-task encoder (CPU, ~15 min)")
    _train_args(train)
    train.set_defaults(handler=_train)
    ext = enc_sub.add_parser("extract", help="run a backend over {id, text} JSONL")
    ext.add_argument("--in", dest="inp", type=Path, required=True, help="JSONL with id, text")
    ext.add_argument("--out", type=Path, required=True, help="prediction JSONL")
    ext.add_argument("--backend", choices=("encoder", "lexicon"), default="encoder")
    ext.set_defaults(handler=_extract)
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
    p.add_argument("--threads", type=int, help="torch threads (default: [encoder] threads)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")


def base_dir(settings: Settings) -> Path:
    from extraction.encoder.model import default_base_dir

    base = settings.encoder.base
    return settings.resolve(base) if base is not None else default_base_dir()


def model_dir(settings: Settings) -> Path:
    configured = settings.encoder.model_dir
    return settings.resolve(configured) if configured else settings.state_dir / "encoder"


def project_lexicon(settings: Settings) -> Lexicon | None:
    """The configured lexicon; the encoder also works without one (corpus names only)."""
    path = settings.extraction.lexicon
    if path is None or not settings.resolve(path).is_file():
        log.warning("no supplement lexicon at %s: normalising with corpus names only", path)
        return None
    return Lexicon.load(settings.resolve(path))


def encoder_backend(settings: Settings, lexicon: Lexicon | None) -> SentenceBackend:
    """The trained encoder backend as configured (threads, batch size, directories)."""
    import torch

    from extraction.encoder.backend import load_backend

    torch.set_num_threads(settings.encoder.threads)
    enc = settings.encoder
    return load_backend(
        model_dir(settings), base_dir(settings), lexicon, enc.batch_size, enc.known_only
    )


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from extraction.encoder.normalize import LazyEmbedder
    from extraction.encoder.train import train

    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        seed=args.seed,
        threads=args.threads or settings.encoder.threads,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
    )
    base = base_dir(settings)
    out = args.out or model_dir(settings)
    dev = load_corpus(args.dev) if args.dev else []
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


def _read_inputs(path: Path) -> list[tuple[str, str]]:
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if not isinstance(obj.get("id"), str) or not isinstance(obj.get("text"), str):
            raise ConfigError(f"{path}:{lineno}: each line needs string 'id' and 'text'")
        items.append((obj["id"], obj["text"]))
    return items


def sentence_backend(settings: Settings, name: str) -> SentenceBackend:
    """``encoder`` or the lexicon rules (``lexicon``), composed from the configuration."""
    if name == "encoder":
        return encoder_backend(settings, project_lexicon(settings))
    from adapter.engine import event_terms, load_lexicon
    from extraction.rules import RulesBackend

    return RulesBackend(load_lexicon(settings), event_terms(settings))


def _extract(args: argparse.Namespace, settings: Settings) -> int:
    items = _read_inputs(args.inp)
    ext = settings.extraction
    pipeline = NotePipeline(
        sentence_backend(settings, args.backend), ext.max_sentence_chars, ext.max_note_chars
    )
    results = pipeline.extract([text for _, text in items])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for (rid, _), res in zip(items, results, strict=True):
            row: dict[str, Any] = res.to_json()
            row["id"] = rid
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(items)} texts -> {args.out} ({pipeline.info.backend})")
    return 0


def _info(args: argparse.Namespace, settings: Settings) -> int:
    from extraction.encoder.backend import read_manifest

    manifest = read_manifest(model_dir(settings))
    keep = ("base_model", "base_model_sha256", "weights_sha256", "train_corpus_sha256",
            "steps", "completed", "training_seconds", "config", "created")  # fmt: skip
    summary = {k: manifest.get(k) for k in keep}
    summary["dev"] = manifest.get("dev", [])[-1:] or None
    print(json.dumps(summary, indent=2))
    return 0
