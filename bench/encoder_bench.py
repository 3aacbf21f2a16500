"""Speed, memory, size and accuracy of the encoder and lexicon-rules backends, in one run.

Each backend runs in its own subprocess (so peak RSS is that backend's alone) through the
product's note pipeline, on ``dev.jsonl`` (each record as one text) and ``notes-dev.jsonl``
(full notes); predictions are scored with the project evaluator. Results go to
``bench/results/encoder.json``. ``make bench`` calls :func:`run`; standalone::

    python -m bench.encoder_bench [--backends encoder,lexicon] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "encoder.json"
DEV = REPO / "data" / "corpus" / "dev.jsonl"
NOTES = REPO / "data" / "corpus" / "notes-dev.jsonl"


def _texts(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [(r["id"], r["text"]) for r in rows]


def _timed_extract(pipeline: Any, items: list[tuple[str, str]], out: Path) -> tuple[float, int]:
    """Extract every text (one call, as the worker batches), write predictions; (s, sentences)."""
    start = time.perf_counter()
    results = pipeline.extract([t for _, t in items])
    seconds = time.perf_counter() - start
    with out.open("w", encoding="utf-8") as fh:
        for (rid, _), res in zip(items, results, strict=True):
            fh.write(json.dumps({**res.to_json(), "id": rid}, ensure_ascii=False) + "\n")
    return seconds, sum(r.sentences for r in results)


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    def f1(block: dict[str, Any]) -> dict[str, Any]:
        return {"f1": block["f1"], "ci95": block["f1_ci95"]}

    def lab(block: dict[str, Any]) -> dict[str, Any]:
        return {
            "macro_f1": block["macro_f1"], "macro_ci95": block["macro_f1_ci95"],
            "micro_f1": block["accuracy"], "micro_ci95": block["accuracy_ci95"],
        }  # fmt: skip

    return {
        "ner_strict": f1(report["ner"]["strict"]),
        "ner_relaxed": f1(report["ner"]["relaxed"]),
        "ner_supplement_strict_f1": report["ner"]["per_type"]["supplement_strict"]["f1"],
        "ner_event_strict_f1": report["ner"]["per_type"]["event_strict"]["f1"],
        "normalization_accuracy": report["ner"]["normalization_accuracy"],
        "re_e2e": lab(report["re"]["end_to_end"]),
        "re_gold_found": lab(report["re"]["found_entities"]),
        "uc_e2e": lab(report["uc"]["end_to_end"]),
        "uc_gold_found": lab(report["uc"]["found_entities"]),
        "te_strict": f1(report["te"]["strict"]),
        "te_relaxed": f1(report["te"]["relaxed"]),
    }


def _sizes(backend: str, settings: Any) -> dict[str, Any]:
    from adapter.engine import encoder_base_dir, encoder_model_dir

    def mb(paths: list[Path]) -> float:
        return round(sum(p.stat().st_size for p in paths if p.is_file()) / 1e6, 3)

    lexicon = settings.resolve(settings.extraction.lexicon)
    if backend == "lexicon":
        return {"model_mb": mb([lexicon]), "training_seconds": 0}
    trained = encoder_model_dir(settings)
    manifest = json.loads((trained / "manifest.json").read_text())
    return {
        "trained_weights_mb": mb(list(trained.iterdir())),
        "base_model_mb": mb(list(encoder_base_dir(settings).rglob("*"))),
        "training_seconds": manifest.get("training_seconds"),
        "training_steps": manifest.get("steps"),
        "training_threads": manifest.get("config", {}).get("threads"),
    }


def measure(backend: str, threads: int) -> dict[str, Any]:
    """One backend, in this process: load, warm up, time dev sentences and notes, score."""
    from adapter.config import load_settings
    from adapter.engine import sentence_backend
    from extraction.corpus import load_corpus
    from extraction.evaluate import load_predictions, score_sentences
    from extraction.evaluate_notes import score_notes
    from extraction.pipeline import NotePipeline

    settings = load_settings(REPO / "config.toml")
    start = time.perf_counter()
    pipeline = NotePipeline(
        sentence_backend(settings.with_values("extraction", backend=backend), None)
    )
    if backend != "lexicon":  # the rules need no torch: keep it out of their peak RSS
        import torch

        torch.set_num_threads(threads)
    load_s = time.perf_counter() - start
    dev, notes = _texts(DEV), _texts(NOTES)
    pipeline.extract([t for _, t in dev[:16]])  # warm-up: first-call allocations
    with tempfile.TemporaryDirectory() as tmp:
        dev_s, dev_sents = _timed_extract(pipeline, dev, Path(tmp) / "dev.jsonl")
        notes_s, note_sents = _timed_extract(pipeline, notes, Path(tmp) / "notes.jsonl")
        sent_report = score_sentences(load_corpus(DEV), load_predictions(Path(tmp) / "dev.jsonl"))
        note_report = score_notes(NOTES, Path(tmp) / "notes.jsonl")
    return {
        "backend": backend,
        "threads": threads,
        "load_seconds": round(load_s, 2),
        "dev_records": len(dev),
        "dev_seconds": round(dev_s, 2),
        "sentences_per_s": round(dev_sents / dev_s, 1),
        "notes": len(notes),
        "note_sentences": note_sents,
        "notes_seconds": round(notes_s, 2),
        "notes_per_minute": round(len(notes) / notes_s * 60, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **_sizes(backend, settings),
        "dev_scores": _headline(sent_report),
        "notes_scores": {
            k: note_report[k] for k in ("supplements", "supplements_with_status", "facts")
        },
    }


def run(
    backends: tuple[str, ...] = ("encoder", "lexicon"), threads: int = 2, out: Path = RESULTS
) -> dict[str, Any]:
    """Measure each backend in a fresh subprocess; write and return the combined JSON."""
    rows = {}
    for name in backends:
        cmd = [sys.executable, "-m", "bench.encoder_bench", "--worker", name]
        proc = subprocess.run(
            [*cmd, "--threads", str(threads)], cwd=REPO, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{name} bench failed:\n{proc.stderr[-3000:]}")
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backends": rows,
    }
    if "encoder" in rows and "lexicon" in rows:
        enc, lex = rows["encoder"]["notes_per_minute"], rows["lexicon"]["notes_per_minute"]
        result["lexicon_vs_encoder_speed"] = round(lex / enc, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="encoder,lexicon")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.threads)))
        return
    result = run(tuple(args.backends.split(",")), args.threads, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
