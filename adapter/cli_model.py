"""``dsfhir model prepare``, ``index build`` and ``train``: the LLM engine's life cycle."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from adapter import migrate
from adapter.cli_encoder import DEFAULT_DEV, given, refuse_overwrite, train_encoder
from adapter.config import Settings
from adapter.db import connect, database_dsn, open_pool
from adapter.engine import base_model_dir, load_lexicon, open_index
from extraction.corpus import load_corpus
from extraction.encoder.config import TrainConfig
from extraction.errors import ModelLoadError
from extraction.lexicon import Lexicon
from extraction.llm import base_identity, file_sha256, prepare_base, read_manifest
from extraction.retrieval import Example
from extraction.tasks import (
    PROMPT_VERSIONS,
    TASKS,
    Demo,
    Instance,
    instances,
    parse_task_version,
    task_version,
)
from extraction.train_loop import TrainResult
from extraction.training import (
    DemoLookup,
    TrainOptions,
    build_encoded,
    options_json,
    select_instances,
)

log = logging.getLogger(__name__)
DEFAULT_TRAIN = Path("data/corpus/train.jsonl")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    model = sub.add_parser("model", help="base model: prepare")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    prep = model_sub.add_parser("prepare", help="convert the shipped GGUF into a local HF model")
    prep.set_defaults(handler=_prepare)
    index = sub.add_parser("index", help="retrieval index: build")
    index_sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    build = index_sub.add_parser("build", help="embed the training inputs into pgvector")
    build.add_argument("--train", type=Path, default=DEFAULT_TRAIN)
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.set_defaults(handler=_index_build)
    train = sub.add_parser("train", help="LoRA fine-tuning of the shared multi-task adapter")
    _train_args(train)
    train.set_defaults(handler=_train)


def _train_args(p: argparse.ArgumentParser) -> None:
    d, e = TrainOptions(), TrainConfig()
    p.add_argument(
        "--backend",
        choices=("llm", "encoder"),
        default="llm",
        help="llm: the LoRA adapter (default); encoder: the encoder backend (= encoder train)",
    )
    p.add_argument("--train", type=Path, default=DEFAULT_TRAIN, help="training corpus")
    p.add_argument("--out", type=Path, help="output dir (default: model.adapter / encoder dir)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="without --out, replace the configured (shipped) model if it is complete",
    )
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma list; one adapter")
    p.add_argument("--per-task", action="store_true", help="one adapter per task (out/<task>)")
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=int, default=d.alpha)
    p.add_argument("--targets", default=",".join(d.targets))
    # Shared with the encoder, whose defaults differ: None = the chosen backend's default.
    p.add_argument("--lr", type=float, help=f"LLM {d.lr}, encoder {e.learning_rate}")
    p.add_argument("--epochs", type=float, help=f"LLM {d.epochs}, encoder {e.epochs}")
    p.add_argument("--batch-size", type=int, help=f"LLM {d.batch_size}, encoder {e.batch_size}")
    p.add_argument("--max-length", type=int, help=f"LLM {d.max_length}, encoder {e.max_length}")
    p.add_argument("--train-k", default=",".join(map(str, d.train_k)), help="demos per prompt")
    p.add_argument(
        "--max-per-task", default="", help="caps, e.g. ner=800,re=400 or 500 for every task"
    )
    p.add_argument("--seed", type=int, help=f"LLM {d.seed}, encoder {e.seed}")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        help=f"LLM {d.checkpoint_every}, encoder {e.checkpoint_every}",
    )
    p.add_argument(
        "--prompt-versions",
        help="llm: train on these prompt versions, e.g. ner.v1+re.v1+uc.v1+te.v1 (default: "
        "the current ones)",
    )
    p.add_argument(
        "--init", type=Path, help="llm: continue from this adapter (warm start; its rank applies)"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: [model] or [encoder] threads x [extraction] workers; "
        "one thread is best beside other work)",
    )
    p.add_argument("--dev", type=Path, help=f"encoder: dev corpus scored per epoch ({DEFAULT_DEV})")
    p.add_argument(
        "--max-steps", type=int, help="stop after this many steps (LLM: resumes, then saves)"
    )
    p.add_argument("--resume", action="store_true", help="encoder: continue (the LLM always does)")


@contextmanager
def migrated_pool(settings: Settings) -> Iterator[ConnectionPool]:
    """A pool on a database whose schema is up to date."""
    with database_dsn(settings.database, settings.state_dir) as dsn:
        with connect(dsn, settings.database.connect_timeout_s) as conn:
            migrate.ensure_migrated(conn, migrate.default_migrations_dir())
        pool = open_pool(dsn, settings.database)
        try:
            yield pool
        finally:
            pool.close()


def _prepare(args: argparse.Namespace, settings: Settings) -> int:
    target = prepare_base(base_model_dir(settings))
    print(f"base model ready: {target} ({base_identity(target)['name']})")
    return 0


def corpus_examples(records_path: Path) -> list[Example]:
    pool = [i for r in load_corpus(records_path) for i in instances(r)]
    return [Example(i.task, i.example_id, i.input, i.target) for i in pool]


def _index_build(args: argparse.Namespace, settings: Settings) -> int:
    examples = corpus_examples(args.train)
    version = f"{task_version()}:{file_sha256(args.train)[:12]}"
    with migrated_pool(settings) as pool:
        index = open_index(settings, pool)
        if not args.force and index.versions() == {version} and index.count() == len(examples):
            print(f"index is up to date ({len(examples)} examples, version {version})")
            return 0
        n = index.rebuild(examples, version)
    by_task = {t: sum(e.task == t for e in examples) for t in TASKS}
    print(f"indexed {n} examples ({', '.join(f'{t} {c}' for t, c in by_task.items())})")
    return 0


def _options(args: argparse.Namespace, tasks: Sequence[str]) -> TrainOptions:
    d = TrainOptions()
    return TrainOptions(
        rank=args.rank,
        alpha=args.alpha,
        targets=tuple(args.targets.split(",")),
        lr=given(args.lr, d.lr),
        epochs=given(args.epochs, d.epochs),
        batch_size=given(args.batch_size, d.batch_size),
        max_length=given(args.max_length, d.max_length),
        seed=given(args.seed, d.seed),
        train_k=tuple(int(k) for k in args.train_k.split(",")),
        max_per_task=_caps(args.max_per_task, tasks),
        tasks=tuple(tasks),
        checkpoint_every=given(args.checkpoint_every, d.checkpoint_every),
        init_adapter=str(args.init.resolve()) if args.init else "",
    )


def _caps(spec: str, tasks: Sequence[str]) -> tuple[tuple[str, int], ...]:
    if not spec:
        return ()
    if spec.isdigit():
        return tuple((t, int(spec)) for t in tasks)
    pairs = [item.split("=", 1) for item in spec.split(",")]
    return tuple((t, int(n)) for t, n in pairs if t in tasks)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    if args.backend == "encoder":
        return train_encoder(args, settings)

    torch.set_num_threads(args.threads or settings.single_process_threads(settings.model.threads))
    out_root = args.out or (
        settings.resolve(settings.model.adapter) if settings.model.adapter else None
    )
    if out_root is None:
        print("no output directory: pass --out or set model.adapter")
        return 1
    if args.out is None and not args.overwrite and read_manifest(out_root) is not None:
        print(refuse_overwrite(out_root), file=sys.stderr)
        return 1
    all_tasks = args.tasks.split(",")
    groups = [[t] for t in all_tasks] if args.per_task else [all_tasks]
    outs = [out_root / g[0] if args.per_task else out_root for g in groups]
    if args.init is not None:
        check_warm_start(args.init, outs, _options(args, all_tasks))
    versions = parse_task_version(args.prompt_versions) if args.prompt_versions else None
    base = prepare_base(base_model_dir(settings))
    lexicon = load_lexicon(settings)
    pool_items = [i for r in load_corpus(args.train) for i in instances(r, versions)]
    with migrated_pool(settings) as pool:
        index = open_index(settings, pool)

        def lookup(items: Sequence[Instance], k: int) -> list[Sequence[Demo]]:
            out: list[Sequence[Demo]] = [[] for _ in items]
            for task in {i.task for i in items}:
                idx = [n for n, i in enumerate(items) if i.task == task]
                found = index.nearest(
                    task, [items[n].input for n in idx], k, [{items[n].example_id} for n in idx]
                )
                for n, demos in zip(idx, found, strict=True):
                    out[n] = demos
            return out

        for tasks, out_dir in zip(groups, outs, strict=True):
            opts = _options(args, tasks)
            chosen = select_instances(pool_items, opts)
            _train_one(args, settings, base, out_dir, opts, (chosen, lookup, lexicon, versions))
    return 0


TrainInputs = tuple[list[Instance], DemoLookup, Lexicon, dict[str, int] | None]


def _train_one(
    args: argparse.Namespace,
    settings: Settings,
    base: Path,
    out_dir: Path,
    opts: TrainOptions,
    inputs: TrainInputs,
) -> None:
    from transformers import AutoTokenizer

    from extraction.train_loop import train_lora

    chosen, lookup, lexicon, versions = inputs
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    data = build_encoded(tok, chosen, lookup, opts, lexicon.candidates, versions)
    stamp = task_version(versions or PROMPT_VERSIONS)
    fingerprint = _fingerprint(base, args.train, opts, stamp)
    ckpt = settings.state_dir / "checkpoints" / fingerprint[:16]
    pad = tok.pad_token_id or 0
    result = train_lora(base, data, opts, out_dir, ckpt, fingerprint, pad, args.max_steps)
    _write_manifest(out_dir, base, args.train, opts, result, len(data), stamp)
    print(
        f"adapter saved to {out_dir}: {result.steps} steps, "
        f"loss {result.first_loss:.3f} -> {result.last_loss:.3f}"
    )


def check_warm_start(init: Path, outs: Sequence[Path], opts: TrainOptions) -> None:
    """A warm start must not overwrite its own source, and the LoRA shape comes from it: the
    options that would silently not apply are refused instead."""
    if any(init.resolve() == out.resolve() for out in outs):
        raise ModelLoadError(f"--init {init} is also the output directory: pass another --out")
    config_path = init / "adapter_config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"--init {init}: not a (shared) LoRA adapter directory")
    config = json.loads(config_path.read_text())
    found = (config.get("r"), config.get("lora_alpha"), set(config.get("target_modules") or ()))
    if found != (opts.rank, opts.alpha, set(opts.targets)):
        raise ModelLoadError(
            f"--init {init} has rank {found[0]}, alpha {found[1]}, targets "
            f"{','.join(sorted(found[2]))}: pass the same --rank/--alpha/--targets"
        )


def _fingerprint(base: Path, train: Path, opts: TrainOptions, stamp: str) -> str:
    payload = json.dumps(
        {
            "base": base_identity(base),
            "train": file_sha256(train),
            "opts": options_json(opts),
            "init": _init_weights(opts),  # the warm start's weights identify it
            "tasks": stamp,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _init_weights(opts: TrainOptions) -> dict[str, str]:
    """Path and weight hash of the warm-start adapter ({} for a fresh one)."""
    if not opts.init_adapter:
        return {}
    weights = Path(opts.init_adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"--init {opts.init_adapter}: no adapter_model.safetensors")
    return {"path": opts.init_adapter, "sha256": file_sha256(weights)}


def _init_identity(opts: TrainOptions) -> dict[str, Any]:
    """:func:`_init_weights` plus the training runs behind the warm start (for the manifest)."""
    if not opts.init_adapter:
        return {}
    from adapter.cli_calibrate import training_runs

    runs = [run.as_dict() for run in training_runs(Path(opts.init_adapter))]
    return {**_init_weights(opts), "runs": runs}


def _write_manifest(
    out_dir: Path,
    base: Path,
    train: Path,
    opts: TrainOptions,
    result: TrainResult,
    n: int,
    stamp: str,
) -> None:
    weights = out_dir / "adapter_model.safetensors"
    manifest = {
        "base_model": base_identity(base),
        "adapter_sha256": file_sha256(weights),
        "task_version": stamp,
        "corpus": {str(train): file_sha256(train)},
        "train_options": options_json(opts),
        "init_adapter": _init_identity(opts),
        "instances": n,
        "result": asdict(result),
        "dev_scores": {},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
