"""``dsfhir extract``: run the configured engine on sentences or notes (JSONL or one text)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from adapter.cli_model import migrated_pool
from adapter.config import Settings, describe
from adapter.engine import BACKENDS, opened_extractor, uses_retrieval
from adapter.errors import ConfigError
from extraction.api import Extractor, NoteExtraction

log = logging.getLogger(__name__)
CHUNK = 16  # records per engine call: enough to fill batches, small enough to report progress


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser(
        "extract",
        help="extract supplements, relations and usage from text",
        description="Reads JSONL records {id, text} (a sentence or a whole note) and writes "
        "entities/relations/usage plus note-level supplements and facts per record.",
    )
    src = ex.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="JSONL with id and text per line")
    src.add_argument("--text", help="one text; prints a readable result")
    ex.add_argument("--output", type=Path, help="JSONL output (required with --input)")
    ex.add_argument("--backend", choices=BACKENDS, help="override config")
    ex.add_argument("--k", type=int, help="override retrieval.k (0 = no retrieval)")
    ex.add_argument("--adapter", help="override model.adapter ('none' = base model)")
    ex.add_argument("--te-mode", choices=("pipeline", "task"), help="override extraction.te_mode")
    ex.add_argument("--no-gate", action="store_true", help="run the model on every sentence")
    ex.add_argument(
        "--lexicon-floor",
        action=argparse.BooleanOptionalAction,
        help="override extraction.lexicon_floor",
    )
    ex.add_argument(
        "--event-floor",
        action=argparse.BooleanOptionalAction,
        help="override extraction.event_floor (the LLM's own NER only)",
    )
    ex.add_argument(
        "--status-rules",
        action=argparse.BooleanOptionalAction,
        help="override extraction.status_rules (list headers, dose changes)",
    )
    ex.add_argument(
        "--calibration",
        action=argparse.BooleanOptionalAction,
        help="override extraction.label_calibration",
    )
    ex.add_argument(
        "--ensemble-encoder-weight",
        type=float,
        help="override extraction.ensemble_encoder_weight (1 = the encoder's labels alone)",
    )
    ex.set_defaults(handler=_extract)


# --[no-]<flag> -> [extraction] key
_SWITCHES = {
    "lexicon_floor": "lexicon_floor",
    "event_floor": "event_floor",
    "status_rules": "status_rules",
    "calibration": "label_calibration",
}


def overridden(args: argparse.Namespace, settings: Settings) -> Settings:
    """Settings with the command-line experiment overrides applied (still validated)."""
    ext: dict[str, Any] = {}
    if args.backend:
        ext["backend"] = args.backend
    if args.te_mode:
        ext["te_mode"] = args.te_mode
    if args.no_gate:
        ext["lexicon_gate"] = False
    if args.ensemble_encoder_weight is not None:
        ext["ensemble_encoder_weight"] = args.ensemble_encoder_weight
    for flag, key in _SWITCHES.items():
        if getattr(args, flag) is not None:
            ext[key] = getattr(args, flag)
    update: dict[str, Any] = {"extraction": settings.extraction.model_copy(update=ext)}
    if args.k is not None:
        update["retrieval"] = settings.retrieval.model_copy(update={"k": args.k})
    if args.adapter:
        adapter = None if args.adapter == "none" else Path(args.adapter)
        update["model"] = settings.model.model_copy(update={"adapter": adapter})
    try:
        return Settings.model_validate(settings.model_copy(update=update).model_dump())
    except ValidationError as exc:
        raise ConfigError(describe(exc, "the configuration with these options")) from exc


@contextmanager
def engine(settings: Settings) -> Iterator[Extractor]:
    """The configured extractor, with a database pool only when retrieval needs one."""
    if not uses_retrieval(settings):
        with opened_extractor(settings, None) as extractor:
            yield extractor
        return
    pool: ConnectionPool
    with migrated_pool(settings) as pool, opened_extractor(settings, pool) as extractor:
        yield extractor


def _extract(args: argparse.Namespace, settings: Settings) -> int:
    settings = overridden(args, settings)
    if args.input and not args.output:
        print("--output is required with --input", file=sys.stderr)
        return 2
    with engine(settings) as extractor:
        if args.text is not None:
            (result,) = extractor.extract([args.text])
            print(render(result))
            return 0
        return run_file(extractor, args.input, args.output)


def _read(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                    raise ValueError("record needs a string id")
                yield lineno, obj, None
            except (UnicodeDecodeError, ValueError) as exc:
                yield lineno, None, f"line {lineno}: {exc}"


def run_file(extractor: Extractor, src: Path, dst: Path) -> int:
    """Process every record; a bad record gets an error line and the rest go on."""
    started, done, failed = time.monotonic(), 0, 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    pending: list[dict[str, Any]] = []
    with dst.open("w", encoding="utf-8") as out:
        for lineno, obj, error in _read(src):
            if obj is None:
                failed += 1
                out.write(json.dumps({"id": f"line-{lineno}", "error": error}) + "\n")
                continue
            pending.append(obj)
            if len(pending) >= CHUNK:
                failed += _flush(extractor, pending, out)
                done += len(pending)
                pending = []
                log.info("extracted %d records", done)
        failed += _flush(extractor, pending, out)
        done += len(pending)
    log.info("done: %d records (%d failed) in %.1f s", done, failed, time.monotonic() - started)
    return 0 if failed == 0 else 1


def _flush(extractor: Extractor, records: list[dict[str, Any]], out: Any) -> int:
    if not records:
        return 0
    texts = [r.get("text") for r in records]
    try:
        results: list[NoteExtraction | str] = list(extractor.extract(texts))  # type: ignore[arg-type]
    except ValueError:
        results = [_one(extractor, t) for t in texts]  # find which record is bad
    failed = 0
    for rec, res in zip(records, results, strict=True):
        if isinstance(res, str):
            failed += 1
            out.write(json.dumps({"id": rec["id"], "error": res}) + "\n")
            continue
        line = res.to_json()
        line["id"] = rec["id"]
        line["text"] = res.record.text
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return failed


def _one(extractor: Extractor, text: Any) -> NoteExtraction | str:
    try:
        return extractor.extract([text])[0]
    except ValueError as exc:
        return str(exc).removeprefix("input 0: ")


def render(result: NoteExtraction) -> str:
    """A readable summary of one result."""
    lines = [f"{result.sentences} sentence(s); unparseable: {result.unparseable or 'none'}"]
    status = {u.entity: u.status for u in result.record.usage}
    for ent in result.record.entities:
        extra = (
            f" -> {ent.normalized} [{status.get(ent.id, '')}]" if ent.type == "supplement" else ""
        )
        lines.append(f"  {ent.type:10} {ent.start:>5}-{ent.end:<5} {ent.text!r}{extra}")
    lines.append("supplements:")
    for s in result.supplements:
        detail = f" ({s.status_detail})" if s.status_detail else ""
        lines.append(f"  {s.normalized}: {s.status}{detail}")
    lines.append("facts:")
    lines += [f"  {f.supplement} --{f.relation}--> {f.event}" for f in result.facts] or ["  none"]
    return "\n".join(lines)
