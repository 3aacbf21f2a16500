"""``dsfhir data``: validate and describe annotated corpus files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adapter.config import Settings
from extraction.corpus import load_corpus
from extraction.corpus_stats import compute_stats


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data = sub.add_parser("data", help="annotated corpus files: validate, stats")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    val = data_sub.add_parser("validate", help="check a corpus file against the format")
    val.add_argument("file", type=Path)
    val.set_defaults(handler=_validate)
    st = data_sub.add_parser("stats", help="label balance and coverage of a corpus file")
    st.add_argument("file", type=Path)
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(handler=_stats)


def _validate(args: argparse.Namespace, settings: Settings) -> int:
    records = load_corpus(args.file)
    print(f"{args.file}: {len(records)} records, all valid")
    return 0


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    stats = compute_stats(load_corpus(args.file)).as_dict()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    for key, value in stats.items():
        if isinstance(value, dict):
            body = ", ".join(f"{k} {v}" for k, v in value.items())
            print(f"{key:24} {body}")
        else:
            print(f"{key:24} {value}")
    return 0
