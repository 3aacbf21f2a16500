"""Readable tables for evaluation reports (the JSON form is the report itself)."""

from __future__ import annotations

from typing import Any


def _ci(block: dict[str, Any], key: str) -> str:
    low, high = block.get(key, (None, None))
    return f"[{low:.3f}, {high:.3f}]" if low is not None else ""


def _prf_line(name: str, block: dict[str, Any]) -> str:
    return (
        f"{name:28} P {block['precision']:.3f}  R {block['recall']:.3f}  "
        f"F1 {block['f1']:.3f} {_ci(block, 'f1_ci95')}"
    )


def _label_line(name: str, block: dict[str, Any]) -> str:
    per = "  ".join(
        f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in block["per_label_f1"].items()
    )
    return (
        f"{name:28} acc {block['accuracy']:.3f} {_ci(block, 'accuracy_ci95')}  "
        f"macro-F1 {block['macro_f1']:.3f} {_ci(block, 'macro_f1_ci95')}  n={block['n']}\n"
        f"{'':28} per label: {per}"
    )


def _confusion(conf: dict[str, dict[str, int]]) -> list[str]:
    cols = list(next(iter(conf.values())))
    head = "gold \\ pred".ljust(16) + "".join(c[:12].rjust(13) for c in cols)
    lines = [head]
    for gold, row in conf.items():
        lines.append(gold[:15].ljust(16) + "".join(str(row[c]).rjust(13) for c in cols))
    return lines


def format_sentence_report(rep: dict[str, Any]) -> str:
    lines = [
        f"records {rep['records']}   missing predictions {rep['missing_predictions']}   "
        f"invalid prediction lines {rep['invalid_prediction_lines']}",
        "unparseable outputs: " + ", ".join(f"{k} {v}" for k, v in rep["unparseable"].items()),
        "",
        "NER",
        _prf_line("  strict", rep["ner"]["strict"]),
        _prf_line("  relaxed", rep["ner"]["relaxed"]),
    ]
    for name, block in rep["ner"]["per_type"].items():
        lines.append(_prf_line(f"  {name}", block))
    norm = rep["ner"]["normalization_accuracy"]
    lines.append(
        f"  normalization accuracy     {norm if norm is None else f'{norm:.3f}'} "
        f"(n={rep['ner']['normalization_n']})"
    )
    lines += ["", "TE", _prf_line("  strict", rep["te"]["strict"])]
    lines.append(_prf_line("  relaxed", rep["te"]["relaxed"]))
    for task in ("re", "uc"):
        lines += ["", task.upper()]
        lines.append(_label_line("  end-to-end", rep[task]["end_to_end"]))
        lines.append(_label_line("  found entities", rep[task]["found_entities"]))
        lines += ["  " + line for line in _confusion(rep[task]["confusion"])]
    return "\n".join(lines)


def format_notes_report(rep: dict[str, Any]) -> str:
    lines = [
        f"notes {rep['notes']}   missing predictions {rep['missing_predictions']}   "
        f"invalid prediction lines {rep['invalid_prediction_lines']}",
    ]
    for name in ("supplements", "supplements_with_status", "facts"):
        lines.append(_prf_line(name, rep[name]))
    return "\n".join(lines)
