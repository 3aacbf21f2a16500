"""Sending a note's transaction Bundle: to the FHIR server, or to files for ``--dry-run``.

A transaction whose entries are all conditional (``ifNoneExist`` or a PUT) is idempotent, so
the client may retry it; anything else is sent once. The answer is read entry by entry into
:class:`~adapter.store.OutputRow` (server id from ``response.location``, HTTP status).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from adapter.fhir_client import FhirClient
from adapter.store import OutputRow
from mappers.bundle import PlannedEntry

log = logging.getLogger(__name__)

_STATUS = re.compile(r"^\s*(\d{3})")
# [base/]Type/id[/_history/vid]
_LOCATION = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9.-]{1,64})(?:/_history/[^/]+)?/?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class BundleWriter(Protocol):
    """Sends one transaction; returns (server id, HTTP status) per entry, in order."""

    def write(self, name: str, bundle: dict[str, Any]) -> list[tuple[str | None, int | None]]: ...


def is_idempotent(bundle: dict[str, Any]) -> bool:
    """True when every entry is a conditional create or a PUT (safe to send twice)."""
    for entry in bundle.get("entry") or []:
        req = entry.get("request") or {}
        if req.get("method") == "PUT":
            continue
        if req.get("method") == "POST" and req.get("ifNoneExist"):
            continue
        return False
    return True


def parse_entry_response(entry: dict[str, Any]) -> tuple[str | None, int | None]:
    """(server id, HTTP status) of one transaction-response entry."""
    resp = entry.get("response") or {}
    match = _STATUS.match(str(resp.get("status") or ""))
    status = int(match.group(1)) if match else None
    server_id = None
    loc = _LOCATION.search(str(resp.get("location") or ""))
    if loc:
        server_id = loc.group(2)
    elif isinstance(entry.get("resource"), dict):
        rid = entry["resource"].get("id")
        server_id = str(rid) if rid else None
    return server_id, status


class FhirWriter:
    """Writes to the FHIR server with one transaction per note."""

    def __init__(self, client: FhirClient) -> None:
        self._client = client

    def write(self, name: str, bundle: dict[str, Any]) -> list[tuple[str | None, int | None]]:
        response = self._client.transaction(bundle, idempotent=is_idempotent(bundle))
        answers = [parse_entry_response(e) for e in response.get("entry") or []]
        for (server_id, status), entry in zip(answers, bundle["entry"], strict=True):
            log.debug("%s -> %s/%s (%s)", name, entry["request"]["url"].split("?")[0],
                      server_id, status)  # fmt: skip
        return answers


class DirectoryWriter:
    """``--dry-run``: each Bundle becomes ``<dir>/<name>.json``; nothing is sent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, bundle: dict[str, Any]) -> list[tuple[str | None, int | None]]:
        path = self.directory / f"{_UNSAFE.sub('_', name)}.json"
        path.write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
        return [(None, None) for _ in bundle.get("entry") or []]


def output_rows(
    planned: Sequence[PlannedEntry], answers: Sequence[tuple[str | None, int | None]]
) -> tuple[OutputRow, ...]:
    """Planned entries joined with the server's answers (same order)."""
    return tuple(
        OutputRow(p.resource_type, p.key, p.action, p.resource, p.supplement, sid, status)
        for p, (sid, status) in zip(planned, answers, strict=True)
    )


def written_count(rows: Sequence[OutputRow]) -> int:
    """Resources the server actually created or changed (a matched ifNoneExist is not)."""
    return sum(
        1
        for r in rows
        if r.http_status == 201 or (r.http_status == 200 and r.action in ("update", "retract"))
    )


def pending_payload(
    name: str, bundle: dict[str, Any], planned: Sequence[PlannedEntry], final_state: str = "done"
) -> dict[str, Any]:
    """What the retry queue keeps: the exact Bundle, what each entry is, the state on success."""
    return {
        "name": name,
        "final_state": final_state,
        "bundle": bundle,
        "entries": [
            {"resource_type": p.resource_type, "key": p.key, "action": p.action,
             "supplement": p.supplement}
            for p in planned
        ],
    }  # fmt: skip


def planned_from_payload(payload: dict[str, Any]) -> list[PlannedEntry]:
    entries = payload["bundle"]["entry"]
    return [
        PlannedEntry(e["resource_type"], e["key"], e["action"], entry["resource"], e["supplement"])
        for e, entry in zip(payload["entries"], entries, strict=True)
    ]
