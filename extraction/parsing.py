"""Validate model output against each task's schema and ground it in the input text.

Nothing reaches a result unless it parses and its spans are found in the sentence; what
fails is counted (unparseable outputs, dropped spans), never silently skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from extraction.errors import ModelOutputError
from extraction.tasks import LABELS

_ITEM = re.compile(r'\[\s*"(?:[^"\\]|\\.)*"(?:\s*,\s*"(?:[^"\\]|\\.)*")*\s*\]')


@dataclass
class Parsed:
    """Items recovered from one output, and whether the output as a whole was valid JSON."""

    items: list[list[str]] = field(default_factory=list)
    valid: bool = True
    invalid_items: int = 0


def parse_list(output: str, arity: tuple[int, ...]) -> Parsed:
    """A JSON list of string lists, each of an allowed length.

    Truncated or damaged output is salvaged item by item (complete ``[...]`` items only)
    and reported as not valid, so it is counted as unparseable.
    """
    text = output.strip()
    end = text.find("]]")
    candidate = text[: end + 2] if end >= 0 else text
    try:
        data = json.loads(candidate)
        valid = isinstance(data, list)
    except json.JSONDecodeError:
        data, valid = None, False
    if not valid:
        data = []
        for m in _ITEM.finditer(text):
            try:
                data.append(json.loads(m.group(0)))
            except json.JSONDecodeError:
                continue
    parsed = Parsed(valid=valid)
    for item in data:
        ok = isinstance(item, list) and len(item) in arity and all(isinstance(x, str) for x in item)
        if ok:
            parsed.items.append([x.strip() for x in item])
        else:
            parsed.invalid_items += 1
    return parsed


def parse_label(task: str, output: str) -> str:
    """The label of a generated classification answer ({"relation": ...} / {"usage": ...})."""
    key = "relation" if task == "re" else "usage"
    try:
        data = json.loads(output.strip().split("\n")[0])
        label = data[key] if isinstance(data, dict) else None
    except (json.JSONDecodeError, KeyError) as exc:
        raise ModelOutputError(f"{task}: output is not {{{key!r}: label}}") from exc
    if label not in LABELS[task]:
        raise ModelOutputError(f"{task}: label {label!r} not in {LABELS[task]}")
    return str(label)


def find_span(
    text: str, mention: str, taken: list[tuple[int, int]], after: int = 0
) -> tuple[int, int] | None:
    """Ground ``mention`` in ``text``, case-insensitive and lenient about whitespace.

    Prefers the first free occurrence at or after ``after`` (mentions come in text order),
    then any free occurrence. Free means not overlapping an already grounded span.
    """
    if not mention.strip():
        return None
    pattern = r"\s+".join(re.escape(tok) for tok in mention.split())
    hits = [(m.start(), m.end()) for m in re.finditer(pattern, text, re.IGNORECASE)]
    free = [h for h in hits if all(h[1] <= a or h[0] >= b for a, b in taken)]
    later = [h for h in free if h[0] >= after]
    candidates = later or free
    return candidates[0] if candidates else None
