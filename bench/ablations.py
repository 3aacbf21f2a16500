"""Accuracy ablations for docs/results.md, produced with ``dsfhir extract`` + ``dsfhir evaluate``.

Each configuration runs the real CLI on the dev sentences (optionally a fixed prefix of them)
and on the dev notes, then scores with the evaluator; the JSON reports land in
``bench/results/ablations/`` and a summary in ``bench/results/ablations.json``.

    python -m bench.ablations --runs rules,ft-k0,ft-k1,ft-k3,ft-k1+floor [--limit 150]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "results" / "ablations"

# Fixed runs: name -> extra `dsfhir extract` arguments (status rules off: the baselines as
# first measured; "encoder+status" adds them).
_PLAIN = ["--no-status-rules", "--no-event-floor"]
FIXED: dict[str, list[str]] = {
    "rules": ["--backend", "lexicon", *_PLAIN],
    "encoder": ["--backend", "encoder", "--no-lexicon-floor", *_PLAIN],
    "encoder+floor": ["--backend", "encoder", "--lexicon-floor", *_PLAIN],
    "encoder+status": ["--backend", "encoder", "--no-lexicon-floor", "--status-rules"],
    "base-zero-shot": ["--backend", "llm", "--adapter", "none", "--k", "0", *_PLAIN],
}
# Model runs "<family>-k<N>[+modifier...]", e.g. ft-k1, per-task-k0+te-task, hybrid-k0+floor,
# ft-k0+floor+cal (label calibration from the adapter manifest), ft-k0+floor+events (the
# event gazetteer as a floor under the LLM's events), +status (extraction.status_rules).
FAMILIES: dict[str, list[str]] = {
    "ft": ["--backend", "llm"],  # the shipped shared adapter
    "per-task": ["--backend", "llm", "--adapter", "{per_task}"],
    "hybrid": ["--backend", "encoder+llm"],  # encoder NER, LLM RE/UC
    "reverse-hybrid": ["--backend", "llm+encoder"],  # LLM NER, encoder RE/UC
    # NER voted by LLM, encoder and rules; RE/UC the mean of the LLM's and the encoder's
    # label probabilities (modifiers enc-labels / llm-labels: one side alone).
    "ensemble": ["--backend", "ensemble", "--ensemble-encoder-weight", "0.5"],
}
MODIFIERS: dict[str, list[str]] = {
    "te-task": ["--te-mode", "task"],
    "floor": ["--lexicon-floor"],
    "events": ["--event-floor"],
    "status": ["--status-rules"],
    "nogate": ["--no-gate"],
    "cal": ["--calibration"],
    "enc-labels": ["--ensemble-encoder-weight", "1"],
    "llm-labels": ["--ensemble-encoder-weight", "0"],
}
# Switches a run name turns off unless it names them.
PINNED_OFF = {
    "floor": "--no-lexicon-floor",
    "events": "--no-event-floor",
    "status": "--no-status-rules",
    "cal": "--no-calibration",
}


def extract_args(name: str, per_task: Path) -> list[str]:
    """The `dsfhir extract` arguments a run name stands for (ValueError if it names none)."""
    if name in FIXED:
        return FIXED[name]
    head, *mods = name.split("+")
    family, _, k = head.rpartition("-k")
    if family not in FAMILIES or not k.isdigit() or any(m not in MODIFIERS for m in mods):
        raise ValueError(f"unknown run {name!r}")
    args = [a.replace("{per_task}", str(per_task)) for a in FAMILIES[family]] + ["--k", k]
    # Pinned: the configured defaults must not change what a name means.
    args += [off for mod, off in PINNED_OFF.items() if mod not in mods]
    return args + [a for m in mods for a in MODIFIERS[m]]


def _dsfhir(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "adapter.cli", *args], check=True, cwd=REPO)


def _slice(src: Path, limit: int, dst: Path) -> Path:
    if not limit:
        return src
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    dst.write_text("\n".join(lines[:limit]) + "\n", encoding="utf-8")
    return dst


def _adapter_used() -> str:
    """``dir@sha`` of the shared adapter the runs load (an env override included)."""
    configured = os.environ.get("DSFHIR_MODEL__ADAPTER") or "models/ramie-smollm2"
    manifest = REPO / configured / "manifest.json"
    if not manifest.is_file():
        return configured
    sha = str(json.loads(manifest.read_text()).get("adapter_sha256", ""))[:12]
    return f"{configured}@{sha}"


def run(
    name: str, limit: int, notes: bool, per_task: Path, notes_limit: int = 0, tag: str = ""
) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    extra = extract_args(name, per_task)
    name = f"{name}@{tag}" if tag else name  # e.g. the same run on a newer adapter
    gold = _slice(REPO / "data/corpus/dev.jsonl", limit, OUT / f"dev-{limit}.jsonl")
    pred = OUT / f"{name}.dev.pred.jsonl"
    started = time.monotonic()
    _dsfhir("extract", *extra, "--input", str(gold), "--output", str(pred))
    seconds = time.monotonic() - started
    _dsfhir(
        "evaluate",
        "--gold",
        str(gold),
        "--pred",
        str(pred),
        "--json",
        str(OUT / f"{name}.dev.json"),
    )
    row: dict[str, Any] = {
        "run": name,
        "extract_args": extra,
        "adapter": _adapter_used(),
        "dev_records": limit or "all",
        "dev_seconds": round(seconds, 1),
    }
    row["dev"] = json.loads((OUT / f"{name}.dev.json").read_text())
    if notes:
        npred = OUT / f"{name}.notes.pred.jsonl"
        gold_notes = _slice(
            REPO / "data/corpus/notes-dev.jsonl", notes_limit, OUT / f"notes-{notes_limit}.jsonl"
        )
        started = time.monotonic()
        _dsfhir("extract", *extra, "--input", str(gold_notes), "--output", str(npred))
        row["notes_records"] = notes_limit or "all"
        row["notes_seconds"] = round(time.monotonic() - started, 1)
        report = OUT / f"{name}.notes.json"
        _dsfhir(
            "evaluate",
            "--level",
            "notes",
            "--gold",
            str(gold_notes),
            "--pred",
            str(npred),
            "--json",
            str(report),
        )
        row["notes"] = json.loads(report.read_text())
    return row


def headline(row: dict[str, Any]) -> str:
    dev = row["dev"]

    def ci(block: dict[str, Any], key: str, ci_key: str) -> str:
        low, high = block[ci_key]
        return f"{block[key]:.3f} [{low:.2f}-{high:.2f}]"

    cells = [
        row["run"],
        ci(dev["ner"]["strict"], "f1", "f1_ci95"),
        ci(dev["re"]["end_to_end"], "macro_f1", "macro_f1_ci95"),
        ci(dev["te"]["strict"], "f1", "f1_ci95"),
        ci(dev["uc"]["end_to_end"], "accuracy", "accuracy_ci95"),
    ]
    notes = row.get("notes")
    cells.append(ci(notes["supplements_with_status"], "f1", "f1_ci95") if notes else "")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ablations")
    parser.add_argument("--runs", default="rules,ft-k0,ft-k1,ft-k3")
    parser.add_argument("--limit", type=int, default=0, help="first N dev sentences (0 = all)")
    parser.add_argument("--no-notes", action="store_true")
    parser.add_argument("--notes-limit", type=int, default=0, help="first N dev notes (0 = all)")
    parser.add_argument(
        "--per-task",
        type=Path,
        default=REPO / ".dsfhir" / "adapters" / "per-task",
        help="directory of per-task adapters (dsfhir train --per-task --out DIR)",
    )
    parser.add_argument(
        "--tag", default="", help="suffix for report names (name@tag), e.g. the adapter version"
    )
    args = parser.parse_args(argv)
    summary_path = REPO / "bench" / "results" / "ablations.json"
    names = args.runs.split(",")
    for name in names:
        extract_args(name, args.per_task)  # every name checked before hours of runs start
    for name in names:
        row = run(name, args.limit, not args.no_notes, args.per_task, args.notes_limit, args.tag)
        # Re-read before writing: runs in parallel processes share the summary file.
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        summary[row["run"]] = row
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        print(headline(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
