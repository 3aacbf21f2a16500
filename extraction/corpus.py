"""The gold-data contract: records, loading and validation (shared/spec/ds-annotation-format.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extraction.errors import CorpusError

ENTITY_TYPES = ("supplement", "event")
RELATION_TYPES = ("indication", "adverse_event", "not_related")
USAGE_STATUSES = ("continue", "start", "discontinue", "uncertain")


@dataclass(frozen=True)
class Entity:
    id: str
    type: str
    start: int
    end: int
    text: str
    normalized: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "start": self.start,
            "end": self.end,
            "text": self.text,
        }
        if self.type == "supplement" and self.normalized is not None:
            out["normalized"] = self.normalized
        return out


@dataclass(frozen=True)
class Relation:
    head: str
    tail: str
    type: str | None  # None: the model's output for this pair could not be parsed

    def to_json(self) -> dict[str, Any]:
        return {"head": self.head, "tail": self.tail, "type": self.type}


@dataclass(frozen=True)
class Usage:
    entity: str
    status: str | None  # None: unparseable model output

    def to_json(self) -> dict[str, Any]:
        return {"entity": self.entity, "status": self.status}


@dataclass(frozen=True)
class Record:
    """One annotated (or predicted) sentence."""

    id: str
    text: str
    entities: tuple[Entity, ...] = ()
    relations: tuple[Relation, ...] = ()
    usage: tuple[Usage, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def entity(self, entity_id: str) -> Entity:
        for ent in self.entities:
            if ent.id == entity_id:
                return ent
        raise KeyError(entity_id)

    @property
    def supplements(self) -> tuple[Entity, ...]:
        return tuple(e for e in self.entities if e.type == "supplement")

    @property
    def events(self) -> tuple[Entity, ...]:
        return tuple(e for e in self.entities if e.type == "event")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "text": self.text}
        out["entities"] = [e.to_json() for e in self.entities]
        out["relations"] = [r.to_json() for r in self.relations]
        out["usage"] = [u.to_json() for u in self.usage]
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


class _Reject(Exception):
    """Internal: one validation failure, turned into CorpusError with the location."""


def _require(cond: bool, reason: str) -> None:
    if not cond:
        raise _Reject(reason)


def _parse_entity(raw: Any, text: str) -> Entity:
    _require(isinstance(raw, dict), "entity is not an object")
    eid, etype = raw.get("id"), raw.get("type")
    _require(isinstance(eid, str) and eid != "", "entity without a string id")
    _require(etype in ENTITY_TYPES, f"entity {eid}: type {etype!r} not in {ENTITY_TYPES}")
    start, end, span = raw.get("start"), raw.get("end"), raw.get("text")
    _require(
        isinstance(start, int) and isinstance(end, int) and not isinstance(start, bool),
        f"entity {eid}: start/end must be integers",
    )
    _require(0 <= start < end <= len(text), f"entity {eid}: offsets {start}-{end} out of range")
    _require(
        text[start:end] == span,
        f"entity {eid}: text[{start}:{end}] is {text[start:end]!r}, not {span!r}",
    )
    norm = raw.get("normalized")
    _require(norm is None or isinstance(norm, str), f"entity {eid}: normalized must be a string")
    return Entity(eid, etype, start, end, span, norm.strip().lower() if norm else None)


def _parse_relation(raw: Any, ents: Mapping[str, Entity], lenient: bool) -> Relation:
    _require(isinstance(raw, dict), "relation is not an object")
    head, tail, rtype = raw.get("head"), raw.get("tail"), raw.get("type")
    _require(head in ents, f"relation head {head!r} is not an entity of the record")
    _require(tail in ents, f"relation tail {tail!r} is not an entity of the record")
    _require(ents[head].type == "supplement", f"relation head {head} is not a supplement")
    _require(ents[tail].type == "event", f"relation tail {tail} is not an event")
    ok = rtype in RELATION_TYPES or (lenient and rtype is None)
    _require(ok, f"relation {head}->{tail}: type {rtype!r} not in {RELATION_TYPES}")
    return Relation(head, tail, rtype)


def _parse_usage(raw: Any, ents: Mapping[str, Entity], lenient: bool) -> Usage:
    _require(isinstance(raw, dict), "usage is not an object")
    eid, status = raw.get("entity"), raw.get("status")
    _require(eid in ents, f"usage entity {eid!r} is not an entity of the record")
    _require(ents[eid].type == "supplement", f"usage entity {eid} is not a supplement")
    ok = status in USAGE_STATUSES or (lenient and status is None)
    _require(ok, f"usage of {eid}: status {status!r} not in {USAGE_STATUSES}")
    return Usage(eid, status)


def _list_field(raw: Mapping[str, Any], name: str, lenient: bool) -> list[Any]:
    value = raw.get(name, [] if lenient else None)
    if value is None and lenient:
        return []
    _require(isinstance(value, list), f"field {name!r} missing or not a list")
    return list(value)


def parse_record(raw: Any, *, lenient: bool = False) -> Record:
    """Validate one decoded JSON object; raise ``_Reject`` with the reason.

    ``lenient`` is for system predictions: missing lists are empty and a ``None``
    label marks an output that could not be parsed (scored as a miss).
    """
    _require(isinstance(raw, dict), "record is not a JSON object")
    rid, text = raw.get("id"), raw.get("text")
    _require(isinstance(rid, str) and rid != "", "record without a string id")
    _require(isinstance(text, str), "record without a text string")
    ents: dict[str, Entity] = {}
    for item in _list_field(raw, "entities", lenient):
        ent = _parse_entity(item, text)
        _require(ent.id not in ents, f"duplicate entity id {ent.id}")
        ents[ent.id] = ent
    rels = [_parse_relation(r, ents, lenient) for r in _list_field(raw, "relations", lenient)]
    pairs = [(r.head, r.tail) for r in rels]
    _require(len(pairs) == len(set(pairs)), "a supplement-event pair has two relations")
    usage = [_parse_usage(u, ents, lenient) for u in _list_field(raw, "usage", lenient)]
    counted = [u.entity for u in usage]
    for ent in ents.values():
        if ent.type == "supplement" and not (lenient and not counted):
            n = counted.count(ent.id)
            _require(n == 1, f"supplement {ent.id} has {n} usage statuses, expected exactly 1")
    known = {"id", "text", "entities", "relations", "usage"}
    extra = {k: v for k, v in raw.items() if k not in known}
    return Record(rid, text, tuple(ents.values()), tuple(rels), tuple(usage), extra)


def iter_records(path: Path, *, lenient: bool = False) -> Iterator[Record]:
    """Yield validated records of a JSONL file; the first bad one raises ``CorpusError``."""
    seen: set[str] = set()
    with path.open("rb") as fh:
        for lineno, raw_line in enumerate(fh, start=1):
            if not raw_line.strip():
                continue
            rid: str | None = None
            try:
                obj = json.loads(raw_line.decode("utf-8"))
                if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                    rid = obj["id"]
                record = parse_record(obj, lenient=lenient)
            except UnicodeDecodeError as exc:
                raise CorpusError(str(path), lineno, rid, f"not UTF-8 ({exc.reason})") from exc
            except json.JSONDecodeError as exc:
                raise CorpusError(str(path), lineno, rid, f"invalid JSON ({exc.msg})") from exc
            except _Reject as exc:
                raise CorpusError(str(path), lineno, rid, str(exc)) from exc
            if record.id in seen:
                raise CorpusError(str(path), lineno, record.id, "duplicate record id")
            seen.add(record.id)
            yield record


def load_corpus(path: Path) -> list[Record]:
    """Load and validate a gold corpus file (strict)."""
    return list(iter_records(path))


def write_records(path: Path, records: list[Record]) -> None:
    """Write records as JSON Lines (UTF-8, one record per line)."""
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
