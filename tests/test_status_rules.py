"""Status rules stated by the guidelines (extraction.status_rules): list headers and dose
changes, on their own and inside the note pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from extraction.corpus import Entity, Record, Usage
from extraction.lexicon import Lexicon
from extraction.pipeline import NotePipeline, SentenceResult
from extraction.rules import RulesBackend
from extraction.status_rules import (
    apply_dose_changes,
    apply_list_headers,
    header_status,
    list_items,
)

REPO = Path(__file__).resolve().parent.parent
DISCHARGE = """DISCHARGE MEDICATIONS:
NEW:
- Thiamine 100 mg PO daily
- Acamprosate 666 mg PO TID
CONTINUE:
- Famotidine 20 mg BID for heartburn (replaces licorice)
- Fish oil 1 g daily - hold 7 days before surgery

RESUME:
1. CoQ10 100 mg daily
STOP:
- Licorice root tablets

PATIENT INSTRUCTIONS:
- Keep taking your vitamin D.
"""


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("NEW:", "start"),
        ("New medications:", "start"),
        ("RESUME:", "start"),
        ("STOP:", "discontinue"),
        ("  Hold these:  ", "discontinue"),
        ("CHANGED:", "continue"),
        ("Medication changes:", None),  # any change: starts and stops too
        ("NEW medications (started this admission):", "start"),
        ("Do not start:", None),  # negated
        ("New allergies:", None),  # not a medication-action list
        ("RESUMED:", None),  # "was on X, now back on" is continue, not a plan
        ("CONTINUE:", "continue"),
        ("DISCHARGE MEDICATIONS:", None),  # no status word
        ("Stop or continue:", None),  # two statuses
        ("New problems since the last visit were reviewed today:", None),  # a sentence
        ("NEW: thiamine 100 mg", None),  # inline: the model reads that one itself
    ],
)
def test_header_status(line: str, status: str | None) -> None:
    assert header_status(line) == status


def test_list_items_carry_their_headers_status_until_other_text() -> None:
    items = [(DISCHARGE[pos : DISCHARGE.index("\n", pos)], st) for pos, st in list_items(DISCHARGE)]
    assert items == [
        ("Thiamine 100 mg PO daily", "start"),
        ("Acamprosate 666 mg PO TID", "start"),
        ("Famotidine 20 mg BID for heartburn (replaces licorice)", "continue"),
        # the fish oil item states its own action (hold): not a CONTINUE: item
        ("CoQ10 100 mg daily", "start"),  # numbered items count
        ("Licorice root tablets", "discontinue"),
    ]  # PATIENT INSTRUCTIONS: no status, so its items get none


def test_a_list_ends_at_a_blank_line_and_conditional_stops_are_no_action() -> None:
    text = (
        "STOP:\n- Iron\n\n- Vitamin D 1000 IU daily\n"
        "CONTINUE:\n-Magnesium 400 mg, stop if diarrhea\n"
    )
    items = [(text[pos : text.index("\n", pos)], st) for pos, st in list_items(text)]
    assert items == [("Iron", "discontinue"), ("Magnesium 400 mg, stop if diarrhea", "continue")]


def _note(text: str, mentions: list[tuple[str, int, str]]) -> Record:
    """A note record with one supplement per (surface, occurrence, status)."""
    ents, usage = [], []
    for n, (surface, nth, status) in enumerate(mentions, 1):
        start = -1
        for _ in range(nth + 1):
            start = text.index(surface, start + 1)
        ents.append(Entity(f"T{n}", "supplement", start, start + len(surface), surface))
        usage.append(Usage(f"T{n}", status))
    return Record("note", text, tuple(ents), (), tuple(usage))


def _statuses(record: Record) -> list[str]:
    return [u.status for u in record.usage]


def test_a_list_items_head_supplement_takes_the_header_status() -> None:
    note = _note(
        DISCHARGE,
        [
            ("Thiamine", 0, "continue"),
            ("licorice", 0, "continue"),  # inside the famotidine item: not its head
            ("CoQ10", 0, "continue"),
            ("Licorice", 0, "continue"),
            ("vitamin D", 0, "continue"),  # under a header with no status
        ],
    )
    got = apply_list_headers(note)
    assert _statuses(got) == ["start", "continue", "start", "discontinue", "continue"]
    assert got.entities == note.entities
    plain = _note("Takes fish oil.", [("fish oil", 0, "continue")])
    assert apply_list_headers(plain) is plain


def test_a_dose_change_is_continue_unless_a_start_is_stated() -> None:
    text = (
        "3. Vitamin D insufficiency - increase D3 to 4000 IU daily.\n"
        "4. Start magnesium 400 mg nightly and increase to BID if tolerated.\n"
        "5. Decrease melatonin to 1 mg.\n"
        "6. Begin fish oil."
    )
    note = _note(
        text,
        [("D3", 0, "start"), ("magnesium", 0, "start"), ("melatonin", 0, "discontinue"),
         ("fish oil", 0, "start")],
    )  # fmt: skip
    assert _statuses(apply_dose_changes(note)) == ["continue", "start", "discontinue", "start"]


@pytest.mark.parametrize(
    ("text", "mentions", "want"),
    [
        # the verb belongs to the other sentence / the other supplement
        (
            "Increase magnesium to 400 mg. Vitamin D 50,000 IU weekly x 8 weeks.",
            [("magnesium", 0, "continue"), ("Vitamin D", 0, "start")],
            ["continue", "start"],
        ),
        (
            "Increase magnesium to 400 mg and start vitamin D.",
            [("magnesium", 0, "start"), ("vitamin D", 0, "start")],
            ["continue", "start"],
        ),
        # a switch, an event, a purpose: no dose change
        ("Change fish oil to krill oil.", [("krill oil", 0, "start")], ["start"]),
        ("Increased bruising since ginkgo last week.", [("ginkgo", 0, "start")], ["start"]),
        ("Vitamin C to lower the chance of CRPS.", [("Vitamin C", 0, "start")], ["start"]),
    ],
)
def test_the_dose_rule_reads_only_its_own_clause(
    text: str, mentions: list[tuple[str, int, str]], want: list[str]
) -> None:
    assert _statuses(apply_dose_changes(_note(text, mentions))) == want


class AllStart:
    """The rules backend, but every supplement labelled start (what the rules must fix)."""

    def __init__(self, inner: RulesBackend) -> None:
        self.inner = inner
        self.info = inner.info

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        out = self.inner.predict(sentences)
        for res in out:
            rec = res.record
            usage = tuple(Usage(u.entity, "start") for u in rec.usage)
            res.record = Record(rec.id, rec.text, rec.entities, rec.relations, usage)
        return out


def test_the_pipeline_applies_the_status_rules_only_when_told_to() -> None:
    lexicon = Lexicon.load(REPO / "data/lexicon/supplements.tsv")
    backend = AllStart(RulesBackend(lexicon, ["heartburn"]))
    note = DISCHARGE.replace("Keep taking your vitamin D.", "Increase vitamin D to 2000 IU.")
    (on,) = NotePipeline(backend, status_rules=True).extract([note])
    (off,) = NotePipeline(backend).extract([note])  # off unless asked: the engine asks
    on_list = {s.normalized: s.status for s in on.supplements}
    off_list = {s.normalized: s.status for s in off.supplements}
    assert set(off_list.values()) == {"start"}
    assert on_list["thiamine"] == "start"  # NEW:
    assert on_list["coenzyme q10"] == "start"  # RESUME:
    assert on_list["licorice"] == "discontinue"  # STOP: (the last definite mention)
    assert on_list["vitamin d"] == "continue"  # a dose change, under no status header
    assert set(on_list) == set(off_list)  # only statuses change
