"""``make bench``: speed and memory of each extraction backend on this machine.

Runs every backend named on the command line (default: lexicon, encoder, llm, the
encoder+llm hybrid and the ensemble) over the dev sentences and the 25 dev notes, and writes
``bench/results/extraction.json`` with the machine and configuration recorded. Accuracy
lives in ``dsfhir evaluate`` / docs/results.md; this file is about time and memory. A
backend that cannot start (e.g. a missing model directory) is reported as skipped with the
reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from adapter.cli_extract import engine
from adapter.config import Settings, load_settings
from extraction.api import Extractor
from extraction.parallel import ProcessBackend, backend_counters

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def _texts(path: Path, limit: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()][:limit]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(extractor: Extractor, texts: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    results = extractor.extract(texts)
    return time.perf_counter() - started, sum(r.sentences for r in results)


def _generator_counters(extractor: Extractor) -> dict[str, int]:
    """Token counters of the LLM inside the backend (itself, a hybrid's part, or the sum over
    its worker processes), if any."""
    backend = getattr(extractor, "backend", None)
    if isinstance(backend, ProcessBackend):
        counters = backend.counters()
        counters.pop("peak_rss_kb", None)
        return counters
    return backend_counters(backend)


def _workers_peak_rss_mb(extractor: Extractor) -> float:
    """Peak RSS summed over the model worker processes (0 without workers)."""
    backend = getattr(extractor, "backend", None)
    if not isinstance(backend, ProcessBackend):
        return 0.0
    return backend.counters().get("peak_rss_kb", 0) / 1024


def bench_backend(
    settings: Settings, backend: str, n_sentences: int, n_notes: int
) -> dict[str, Any]:
    cfg = settings.with_values("extraction", backend=backend)
    started = time.perf_counter()
    with engine(cfg) as extractor:
        load_s = time.perf_counter() - started
        sentences = _texts(REPO / "data/corpus/dev.jsonl", n_sentences)
        notes = _texts(REPO / "data/corpus/notes-dev.jsonl", n_notes)
        extractor.extract(sentences[:4])  # warm-up (lazy init, first allocations)
        before = _generator_counters(extractor)
        sent_s, _ = _timed(extractor, sentences)
        after_sent = _generator_counters(extractor)
        note_s, note_sentences = _timed(extractor, notes)
        after = _generator_counters(extractor)
        workers_rss = _workers_peak_rss_mb(extractor)
    out: dict[str, Any] = {
        "backend": backend,
        "load_seconds": round(load_s, 2),
        "sentences": len(sentences),
        "sentences_per_second": round(len(sentences) / sent_s, 3),
        "notes": len(notes),
        "note_sentences": note_sentences,
        "notes_per_minute": round(60 * len(notes) / note_s, 3),
        "workers": cfg.extraction.workers if backend != "lexicon" else 1,
        # this process plus its model workers (each holds a copy of the model)
        "peak_rss_mb": round(_peak_rss_mb() + workers_rss, 1),
    }
    if after:
        gen_tokens = after["generated_tokens"] - before["generated_tokens"]
        prompt_sent = after_sent["prompt_tokens"] - before["prompt_tokens"]
        out["generated_tokens_per_second"] = round(gen_tokens / (sent_s + note_s), 2)
        out["prompt_tokens_per_sentence"] = round(prompt_sent / max(1, len(sentences)), 1)
        computed = after_sent["computed_tokens"] - before["computed_tokens"]
        out["prompt_tokens_computed_per_sentence"] = round(computed / max(1, len(sentences)), 1)
        # Where the notes' time goes (seconds of prefill / decode / label scoring); with
        # worker processes, seconds of work summed over them (more than the wall time).
        out["notes_seconds_by_part"] = {
            key[:-3]: round((after[key] - after_sent.get(key, 0)) / 1000, 1)
            for key in after
            if key.endswith("_ms")
        }
    return out


def _child(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.run", "--one", backend, "--config", str(args.config)]
    cmd += ["--sentences", str(args.sentences), "--notes", str(args.notes)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:  # e.g. no trained encoder yet: report it, measure the others
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"backend": backend, "skipped": reason}
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--backends", default="lexicon,encoder,llm,encoder+llm,ensemble")
    parser.add_argument("--sentences", type=int, default=120)
    parser.add_argument("--notes", type=int, default=25)
    parser.add_argument("--config", type=Path, default=REPO / "config.toml")
    parser.add_argument("--out", type=Path, default=RESULTS / "extraction.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one backend, JSON out
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    if args.one:
        print(json.dumps(bench_backend(settings, args.one, args.sentences, args.notes)))
        return 0
    # One process per backend, so peak RSS and warm caches are each backend's own.
    rows = [_child(b, args) for b in args.backends.split(",")]
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "config": {
            "model": settings.model.model_dump(mode="json"),
            "retrieval": settings.retrieval.model_dump(mode="json"),
            "extraction": settings.extraction.model_dump(mode="json"),
        },
        "results": rows,
    }
    measured = [r for r in rows if "skipped" not in r]
    llm = next((r for r in measured if r["backend"] == "llm"), None)
    fast = [r for r in measured if r["backend"] != "llm"]
    if llm and fast:
        report["speed_ratio_vs_llm"] = {
            r["backend"]: round(r["notes_per_minute"] / llm["notes_per_minute"], 1) for r in fast
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
