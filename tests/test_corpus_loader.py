"""Loader: one test per rejection rule, each naming the record and the reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from extraction.corpus import load_corpus
from extraction.errors import CorpusError

GOOD: dict[str, Any] = {
    "id": "s-1",
    "text": "Stopped ginkgo after easy bruising.",
    "entities": [
        {"id": "T1", "type": "supplement", "start": 8, "end": 14, "text": "ginkgo",
         "normalized": "ginkgo"},
        {"id": "T2", "type": "event", "start": 21, "end": 34, "text": "easy bruising"},
    ],
    "relations": [{"head": "T1", "tail": "T2", "type": "adverse_event"}],
    "usage": [{"entity": "T1", "status": "discontinue"}],
}  # fmt: skip


def write(tmp_path: Path, *records: Any) -> Path:
    path = tmp_path / "c.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mutate(**changes: Any) -> dict[str, Any]:
    rec = copy.deepcopy(GOOD)
    for path, value in changes.items():
        target: Any = rec
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target[k]
        last = keys[-1]
        target[int(last) if last.isdigit() else last] = value
    return rec


def test_good_record_loads(tmp_path: Path) -> None:
    (rec,) = load_corpus(write(tmp_path, GOOD))
    assert rec.entity("T1").normalized == "ginkgo"
    assert rec.extra == {}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (mutate(entities__0__end=13), "text[8:13] is 'ginkg', not 'ginkgo'"),
        (mutate(entities__1__start=40, entities__1__end=45), "out of range"),
        (mutate(entities__1__id="T1"), "duplicate entity id T1"),
        (mutate(entities__0__type="drug"), "type 'drug' not in"),
        (mutate(relations__0__head="T2", relations__0__tail="T1"), "head T2 is not a supplement"),
        (mutate(relations__0__tail="T9"), "tail 'T9' is not an entity"),
        (mutate(relations__0__type="treats"), "type 'treats' not in"),
        (mutate(usage=[]), "has 0 usage statuses, expected exactly 1"),
        (mutate(usage=[{"entity": "T1", "status": "start"}] * 2), "has 2 usage statuses"),
        (mutate(usage__0__status="ongoing"), "status 'ongoing' not in"),
        (mutate(usage__0__entity="T2"), "usage entity T2 is not a supplement"),
        (mutate(entities="T1"), "'entities' missing or not a list"),
        (mutate(text=None), "without a text string"),
    ],
)
def test_each_rejection_rule_names_record_and_reason(
    tmp_path: Path, record: dict[str, Any], reason: str
) -> None:
    with pytest.raises(CorpusError) as err:
        load_corpus(write(tmp_path, GOOD | {"id": "s-0"}, record))
    assert "record 's-1'" in str(err.value)
    assert ":2:" in str(err.value)  # the line number
    assert reason in str(err.value)


def test_duplicate_record_id_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="duplicate record id"):
        load_corpus(write(tmp_path, GOOD, GOOD))


def test_broken_json_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="invalid JSON"):
        load_corpus(write(tmp_path, GOOD | {"id": "ok"}, '{"id": "s-9", '))
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode()[:-2] + b'\xe9"}\n')
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus(path)


def test_two_relations_for_one_pair(tmp_path: Path) -> None:
    rec = mutate(relations=[GOOD["relations"][0], GOOD["relations"][0] | {"type": "indication"}])
    with pytest.raises(CorpusError, match="pair has two relations"):
        load_corpus(write(tmp_path, rec))
