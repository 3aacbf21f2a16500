"""Usage-status rules the guidelines state outright and a sentence model cannot see or keeps
missing (guidelines §6), applied to any backend's output before note aggregation.

- **List headers.** Discharge and reconciliation lists put the status in a header line
  ("NEW:", "STOP:", "RESUME:", "CONTINUE:", "CHANGED:") above one item per line; sentence
  splitting separates the item from its header, so the model reads "- Thiamine 100 mg PO
  daily" alone. The supplement an item names first (its head) takes the header's status:
  new or to resume -> start, stopped or held -> discontinue, continued or dose-changed
  -> continue. Headers that are negated or not about medications ("Do not start:", "New
  allergies:") and items that state their own action are left alone. Mentions later in
  the item ("Famotidine ... (replaces licorice)") keep theirs.
- **Dose changes.** "increase D3 to 4000 IU" is ``continue`` (§6: dose changes), but small
  models read the verb as a start. A ``start`` whose clause has a dose-change verb and no
  start cue becomes ``continue``; the clause ends at a sentence break or a neighbouring
  supplement, and the verb must name a new dose or schedule ("to 4000 IU", "dosing"), so
  "increased bruising" or "changed to magnesium oxide" (a switch) do not count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from extraction.corpus import Record, Usage

_HEADER = re.compile(r"^(?P<words>[A-Za-z][A-Za-z /&()-]{0,60}?)\s*:$")
_ITEM = re.compile(r"^[ \t]*(?:[-*\u2022\u2013\u25aa]+[ \t]*|\d{1,2}[.)][ \t]+)(?=\S)")
_HEADER_STATUS = {
    "new": "start",
    "start": "start",
    "started": "start",
    "begin": "start",
    "resume": "start",  # a plan to resume a held supplement (§6); "resumed" is continue
    "restart": "start",
    "stop": "discontinue",
    "stopped": "discontinue",
    "discontinue": "discontinue",
    "discontinued": "discontinue",
    "hold": "discontinue",
    "held": "discontinue",
    "holding": "discontinue",
    "continue": "continue",
    "continued": "continue",
    "continuing": "continue",
    "unchanged": "continue",
    "changed": "continue",  # "CHANGED:" lists dose changes; "Medication changes:" is anything
}
# "Do not start:", "New allergies:", "New problems:" are not medication-action lists.
_NOT_A_MED_LIST = re.compile(
    r"\b(not|no|don'?t|never|avoid|allerg\w*|intoleran\w*|problems?|diagnos\w*|symptoms?|"
    r"labs?|findings?|complaints?|issues?|concerns?)\b",
    re.IGNORECASE,
)
_MAX_HEADER_WORDS = 6
# An item that states its own action ("- Fish oil: hold 7 days before surgery" under
# CONTINUE:) keeps the model's reading; a conditional stop ("stop if rash") is no action.
_ITEM_ACTION = {
    "start": re.compile(r"\b(start\w*|begin|began|new|resume|restart\w*)\b", re.IGNORECASE),
    "discontinue": re.compile(
        r"\b(stop\w*|hold|held|discontinu\w*|d/c\w*|quit|avoid)\b", re.IGNORECASE
    ),
    "continue": re.compile(r"\bcontinu(e|es|ed|ing)\b", re.IGNORECASE),
}
_CONDITIONAL_STOP = re.compile(r"\b(stop|hold)\w*\s+(if|when|unless|for\s+any)\b", re.IGNORECASE)
# A dose change names the new dose or schedule: "increase D3 to 4000 IU", "change ferrous
# sulfate to every-other-day dosing"; "increased bruising", "to lower the chance of" and
# "changed to magnesium oxide" (a switch) are not.
_DOSE_CHANGE = re.compile(
    r"\b(increas\w*|decreas\w*|reduc\w*|lower\w*|rais\w*|doubl\w*|halv\w*|titrat\w*|"
    r"adjust\w*|chang\w*|cut\s+back|go\s+up|bump\w*)\b[^.;\n]{0,40}?"
    r"(\b(to|by)\s+(\d|one\b|two\b|half\b|every|once\b|twice\b|bid\b|tid\b|qid\b|daily\b)|"
    r"\bdos(e|es|ing)\b)",
    re.IGNORECASE,
)
_START_CUE = re.compile(
    r"\b(start\w*|began|begin\w*|initiat\w*|new|newly|add\w*|trial|try|tried|recommend\w*|"
    r"resum\w*|restart\w*|prescrib\w*|consider\w*|suggest\w*|today|recent\w*|"
    r"last\s+(week|wk|month|mo)|switch\w*|replac\w*|instead)\b",
    re.IGNORECASE,
)
_CLAUSE_BREAKS = ("\n", ". ", "; ")
_CONJUNCTION = re.compile(r",|\b(and|but|then|or)\b", re.IGNORECASE)


def header_status(line: str) -> str | None:
    """The status a list header line gives its items, or None (not a header, no status
    word, words for two different statuses, negated or not about medications)."""
    m = _HEADER.match(line.strip())
    if m is None or _NOT_A_MED_LIST.search(m.group("words")):
        return None
    words = re.findall(r"[a-z]+", m.group("words").lower())
    found = {_HEADER_STATUS[w] for w in words if w in _HEADER_STATUS}
    if len(words) > _MAX_HEADER_WORDS or len(found) != 1:
        return None
    return found.pop()


def list_items(text: str) -> Iterator[tuple[int, str]]:
    """(offset of the item's first character after its bullet, header status) for each
    list item right under a status header, unless the item states another action itself.
    A blank line or any line that is not an item ends the list."""
    status: str | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        item = _ITEM.match(bare)
        if item is None:
            status = header_status(bare) if bare.strip() else None
        elif status is not None and not _states_other(bare[item.end() :], status):
            yield pos + item.end(), status
        pos += len(line)


def _states_other(item: str, status: str) -> bool:
    item = _CONDITIONAL_STOP.sub(" ", item)
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
    spans = [(e.start, e.end) for e in record.supplements]
    override = {}
    for ent in record.supplements:
        if status.get(ent.id) != "start":
            continue
        clause = _clause(record.text, ent.start, ent.end, spans)
        if _DOSE_CHANGE.search(clause) and not _START_CUE.search(clause):
            override[ent.id] = "continue"
    return _with_statuses(record, override)


def _clause(text: str, start: int, end: int, supplements: list[tuple[int, int]]) -> str:
    """The text around a mention up to a line or sentence break, a semicolon, or the
    neighbouring supplement mentions (their words belong to them)."""
    breaks = [(text.rfind(sep, 0, start), len(sep)) for sep in _CLAUSE_BREAKS]
    left = max([at + size for at, size in breaks if at >= 0] + [0])
    left = max([left] + [b for a, b in supplements if b <= start])
    found = [i for i in (text.find(sep, end) for sep in _CLAUSE_BREAKS) if i >= 0]
    right = min(found + [a for a, b in supplements if a >= end] + [len(text)])
    # "... to 400 mg and start vitamin D": what follows a conjunction is the next action's
    joint = _CONJUNCTION.search(text, end, right)
    return text[left : joint.start() if joint else right]


def _with_statuses(record: Record, override: dict[str, str]) -> Record:
    if not override:
        return record
    usage = tuple(Usage(u.entity, override.get(u.entity, u.status)) for u in record.usage)
    return Record(record.id, record.text, record.entities, record.relations, usage)
