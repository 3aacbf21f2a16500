"""Usage-status rules the guidelines state outright and a sentence model cannot see or keeps
missing (guidelines §6), applied to any backend's output before note aggregation.

- **List headers.** Discharge and reconciliation lists put the status in a header line
  ("NEW:", "STOP:", "RESUME:", "CONTINUE:", "CHANGED:") above one item per line; sentence
  splitting separates the item from its header, so the model reads "- Thiamine 100 mg PO
  daily" alone. The supplement an item names first (its head) takes the header's status:
  new or resumed -> start, stopped or held -> discontinue, continued or dose-changed ->
  continue. Mentions later in the item ("Famotidine ... (replaces licorice)") keep theirs.
- **Dose changes.** "increase D3 to 4000 IU" is ``continue`` (§6: dose changes), but small
  models read the verb as a start. A ``start`` whose clause has a dose-change verb and no
  start cue becomes ``continue``. In the training corpus such clauses are ``start`` in 2 of
  71 supplement mentions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from extraction.corpus import Record, Usage

_HEADER = re.compile(r"^[ \t]*(?P<words>[A-Za-z][A-Za-z /&()-]{0,48}?)[ \t]*:[ \t]*$")
_ITEM = re.compile(r"^[ \t]*(?:[-*\u2022]|\d{1,2}[.)])[ \t]+")
_HEADER_STATUS = {
    "new": "start",
    "start": "start",
    "started": "start",
    "begin": "start",
    "resume": "start",
    "resumed": "start",
    "restart": "start",
    "stop": "discontinue",
    "stopped": "discontinue",
    "discontinue": "discontinue",
    "discontinued": "discontinue",
    "hold": "discontinue",
    "held": "discontinue",
    "continue": "continue",
    "continued": "continue",
    "unchanged": "continue",
    "changed": "continue",  # "CHANGED:" lists dose changes; "Medication changes:" is anything
}
_MAX_HEADER_WORDS = 4
# An item that states its own action ("- Fish oil: hold 7 days before surgery" under
# CONTINUE:) keeps the model's reading.
_ITEM_ACTION = {
    "start": re.compile(r"\b(start\w*|begin|began|new|resum\w*|restart\w*)\b", re.IGNORECASE),
    "discontinue": re.compile(
        r"\b(stop\w*|hold|held|discontinu\w*|d/c\w*|quit|avoid)\b", re.IGNORECASE
    ),
}
_DOSE_CHANGE = re.compile(
    r"\b(increas\w*|decreas\w*|reduc\w*|lower\w*|rais\w*|doubl\w*|halv\w*|titrat\w*|"
    r"adjust\w*|chang\w*|cut\s+back|go\s+up|bump\w*)\b",
    re.IGNORECASE,
)
_START_CUE = re.compile(
    r"\b(start\w*|began|begin\w*|initiat\w*|new|newly|add\w*|trial|try|tried|recommend\w*|"
    r"resum\w*|restart\w*|prescrib\w*|consider\w*|suggest\w*)\b",
    re.IGNORECASE,
)
_CLAUSE_WIDTH = 60


def header_status(line: str) -> str | None:
    """The status a list header line gives its items, or None (not a header, no status
    word, or words for two different statuses)."""
    m = _HEADER.match(line)
    if m is None:
        return None
    words = re.findall(r"[a-z]+", m.group("words").lower())
    found = {_HEADER_STATUS[w] for w in words if w in _HEADER_STATUS}
    if len(words) > _MAX_HEADER_WORDS or len(found) != 1:
        return None
    return found.pop()


def list_items(text: str) -> Iterator[tuple[int, str]]:
    """(offset of the item's first character after its bullet, header status) for each
    list item under a status header, unless the item states another action itself. Blank
    lines keep a list open; any other line ends it."""
    status: str | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        item = _ITEM.match(bare)
        if item and status is not None and not _states_other(bare[item.end() :], status):
            yield pos + item.end(), status
        elif bare.strip() and not item:
            status = header_status(bare)
        pos += len(line)


def _states_other(item: str, status: str) -> bool:
    return any(rx.search(item) for st, rx in _ITEM_ACTION.items() if st != status)


def apply_list_headers(record: Record) -> Record:
    """``record`` (offsets into a whole note) with each list item's head supplement given its
    header's status."""
    heads = dict(list_items(record.text))
    if not heads:
        return record
    override = {e.id: heads[e.start] for e in record.supplements if e.start in heads}
    return _with_statuses(record, override)


def apply_dose_changes(record: Record) -> Record:
    """``record`` with dose-change ``start`` labels turned to ``continue`` (see module)."""
    status = {u.entity: u.status for u in record.usage}
    override = {}
    for ent in record.supplements:
        if status.get(ent.id) != "start":
            continue
        clause = _clause(record.text, ent.start, ent.end)
        if _DOSE_CHANGE.search(clause) and not _START_CUE.search(clause):
            override[ent.id] = "continue"
    return _with_statuses(record, override)


def _clause(text: str, start: int, end: int) -> str:
    left = max(text.rfind("\n", 0, start) + 1, start - _CLAUSE_WIDTH)
    right = text.find("\n", end)
    right = len(text) if right < 0 else right
    return text[left : min(right, end + _CLAUSE_WIDTH)]


def _with_statuses(record: Record, override: dict[str, str]) -> Record:
    if not override:
        return record
    usage = tuple(Usage(u.entity, override.get(u.entity, u.status)) for u in record.usage)
    return Record(record.id, record.text, record.entities, record.relations, usage)
