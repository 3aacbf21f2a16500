"""``dsfhir evaluate``: score predictions against gold (sentence or note level)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adapter.config import Settings
from extraction.corpus import load_corpus
from extraction.eval_report import format_notes_report, format_sentence_report
from extraction.evaluate import load_predictions, score_sentences
from extraction.evaluate_notes import score_notes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="score a prediction file against gold",
        description="NER/RE/TE/UC scores with 95%% bootstrap CIs (sentences), or note-level "
        "supplement lists and relation facts (--level notes).",
    )
    ev.add_argument("--gold", type=Path, required=True, help="gold JSONL")
    ev.add_argument("--pred", type=Path, required=True, help="prediction JSONL")
    ev.add_argument("--level", choices=("sentences", "notes"), default="sentences")
    ev.add_argument("--json", type=Path, help="also write the full report as JSON here")
    ev.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    if args.level == "notes":
        report = score_notes(args.gold, args.pred)
        print(format_notes_report(report))
    else:
        report = score_sentences(load_corpus(args.gold), load_predictions(args.pred))
        print(format_sentence_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0
