"""``make demo``: the FHIR adapter end to end on this machine, nothing to set up.

Starts the embedded Postgres and a local sekmet-fhir server on loopback (state under
``<state_dir>/demo-fhir``), seeds the synthetic patients and notes of
``examples/demo_patients.json``, runs a sync cycle with the shipped adapter, amends two notes
(as an EHR would) and runs a second cycle, then prints each patient's supplement list and
what was written back. Seeding is idempotent and the adapter's writes are conditional, so
running the demo again writes nothing new.

    python examples/demo.py [--config config.toml] [--backend lexicon]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from adapter import migrate
from adapter.cli import setup_logging
from adapter.cli_sync import Runtime, lexicon_codes, report_lines, run_cycle
from adapter.config import Settings, load_settings
from adapter.db import connect, database_dsn, open_pool
from adapter.engine import BACKENDS, build_extractor, close_extractor, load_lexicon
from adapter.errors import DsfhirError, FhirFatalError
from adapter.fhir_client import FhirClient
from extraction.api import Extractor

EXAMPLES = Path(__file__).resolve().parent
SEKMET = Path(sys.executable).parent / "sekmet"


def say(text: str = "") -> None:
    """The demo's output (stdout; logs stay on stderr)."""
    sys.stdout.write(text + "\n")


# ---- a local FHIR server ---------------------------------------------------------------


def _port(workdir: Path) -> int:
    """The port of an earlier run when still free (same source, so its watermark applies)."""
    saved = workdir / "port"
    candidates = [int(saved.read_text())] if saved.is_file() else []
    for port in [*candidates, 0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen = int(sock.getsockname()[1])
        saved.write_text(str(chosen))
        return chosen
    raise RuntimeError("no free loopback port")


@contextmanager
def fhir_server(workdir: Path) -> Iterator[str]:
    """sekmet-fhir on 127.0.0.1 with its data under ``workdir``; yields the base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _port(workdir)
    base_url = f"http://127.0.0.1:{port}/fhir"
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "base_url": base_url,
        "data_dir": str((workdir / "data").resolve()),
        "server_auth": {"types": ["none"]},
        "simulator": {"enabled": False},
        "log_inbound": False,
        "own_private_key_path": str((workdir / "data" / "sekmet_private.pem").resolve()),
    }
    config = (workdir / "settings.yaml").resolve()
    config.write_text(json.dumps(settings, indent=2))  # JSON is YAML
    with (workdir / "sekmet.log").open("wb") as log:
        # fixed argv: the venv's own sekmet executable and the file written just above
        proc = subprocess.Popen(  # noqa: S603
            [str(SEKMET), "serve", "-c", str(config)], stdout=log, stderr=log
        )
    try:
        _wait(base_url, proc)
        yield base_url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _wait(base_url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base_url}/metadata", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the local FHIR server did not start (see demo-fhir/sekmet.log)")


# ---- synthetic data ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _attachment(note: dict[str, Any], text_file: str | None) -> dict[str, Any]:
    if "pdf" in note:
        placeholder = f"%PDF-1.4\n% {note['pdf']} (synthetic placeholder)\n".encode()
        return {"contentType": "application/pdf", "data": _b64(placeholder), "title": note["pdf"]}
    path = EXAMPLES / str(text_file)
    mime = "text/html" if path.suffix == ".html" else "text/plain"
    data = path.read_bytes()
    if note.get("as") == "binary":
        return {"contentType": f"{mime}; charset=utf-8", "url": f"Binary/{note['id']}-text"}
    return {"contentType": f"{mime}; charset=utf-8", "data": _b64(data), "size": len(data)}


def document(note: dict[str, Any], text_file: str | None) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": note["id"],
        "status": "current",
        "docStatus": "amended" if text_file and text_file == note.get("amended") else "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": note["loinc"]}]},
        "category": [{"coding": [{
            "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
            "code": "clinical-note"}]}],
        "subject": {"reference": f"Patient/{note['patient']}"},
        "date": note["date"],
        "content": [{"attachment": _attachment(note, text_file)}],
    }  # fmt: skip


def _exists(client: FhirClient, path: str) -> dict[str, Any] | None:
    try:
        return client.get_json(path)
    except FhirFatalError as exc:
        if exc.status in (404, 410):
            return None
        raise


def _put(client: FhirClient, resource: dict[str, Any]) -> None:
    path = f"{resource['resourceType']}/{resource['id']}"
    client.request("PUT", path, json_body=resource)


def seed(client: FhirClient, manifest: dict[str, Any]) -> int:
    """Create what is missing (never rewrites an existing resource); how many were created."""
    created = 0
    for p in manifest["patients"]:
        if _exists(client, f"Patient/{p['id']}") is None:
            _put(client, {"resourceType": "Patient", "id": p["id"], "gender": p["gender"],
                          "birthDate": p["birthDate"],
                          "name": [{"family": p["family"], "given": [p["given"]]}]})  # fmt: skip
            created += 1
    for note in manifest["notes"]:
        if _exists(client, f"DocumentReference/{note['id']}") is not None:
            continue
        if note.get("as") == "binary":
            text = (EXAMPLES / note["file"]).read_bytes()
            binary = {"resourceType": "Binary", "id": f"{note['id']}-text",
                      "contentType": "text/plain; charset=utf-8", "data": _b64(text)}  # fmt: skip
            _put(client, binary)
        _put(client, document(note, note.get("file")))
        created += 1
    return created


def amend(client: FhirClient, manifest: dict[str, Any]) -> int:
    """Replace notes that have a second version, unless that version is already there."""
    amended = 0
    for note in manifest["notes"]:
        if "amended" not in note:
            continue
        new = document(note, note["amended"])
        current = _exists(client, f"DocumentReference/{note['id']}") or {}
        if current.get("content") != new["content"]:
            _put(client, new)
            amended += 1
    return amended


# ---- the run -------------------------------------------------------------------------------


def engine(settings: Settings, rt_pool: Any, backend: str | None) -> tuple[Settings, Extractor]:
    """The configured engine, checked on one sentence; the rules engine if it is not ready."""
    if backend:
        settings = settings.with_values("extraction", backend=backend)
    extractor = None
    try:
        extractor = build_extractor(settings, rt_pool)
        extractor.extract(["Takes vitamin D daily."])
        return settings, extractor
    except BaseException as exc:
        if extractor is not None:
            close_extractor(extractor)
        if not isinstance(exc, DsfhirError):
            raise
        if backend or settings.extraction.backend == "lexicon":
            raise
        say(f"note: the {settings.extraction.backend!r} engine is not ready here ({exc});")
        say("      this demo runs with the lexicon rules engine instead.\n")
        settings = settings.with_values("extraction", backend="lexicon")
        return settings, build_extractor(settings, rt_pool)


def written_back(client: FhirClient, system: str) -> tuple[dict[str, dict[str, int]], Any]:
    """Resources carrying our identifier system, by type and status, and one example."""
    counts: dict[str, dict[str, int]] = {}
    statements: list[dict[str, Any]] = []
    for rtype, param in (("MedicationStatement", "identifier"), ("Observation", "identifier"),
                         ("Provenance", "_tag")):  # fmt: skip
        for page in client.search_pages(rtype, [(param, f"{system}|"), ("_count", "200")]):
            for entry in page.get("entry") or []:
                res = entry["resource"]
                by_status = counts.setdefault(rtype, {})
                status = str(res.get("status", ""))
                by_status[status] = by_status.get(status, 0) + 1
                if rtype == "MedicationStatement":
                    statements.append(res)
    # the most telling example: coded, with a reason, else coded, else any
    statements.sort(
        key=lambda r: (not r["medicationCodeableConcept"].get("coding"), "reasonCode" not in r)
    )
    return counts, statements[0] if statements else None


def run(settings: Settings, backend: str | None) -> None:
    manifest = json.loads((EXAMPLES / "demo_patients.json").read_text(encoding="utf-8"))
    with fhir_server(settings.state_dir / "demo-fhir") as base_url:
        # freshly seeded notes are seconds old: no safety lag in the demo
        settings = settings.with_values("fhir", base_url=base_url, safety_lag_s=0)
        with database_dsn(settings.database, settings.state_dir) as dsn:
            with connect(dsn) as conn:
                migrate.apply_pending(conn, migrate.default_migrations_dir())
            pool = open_pool(dsn, settings.database)
            try:
                settings, extractor = engine(settings, pool, backend)
                try:
                    codes = lexicon_codes(load_lexicon(settings))
                    with FhirClient(base_url, sleep=time.sleep) as client:
                        rt = Runtime(pool, client, extractor, codes)
                        _cycles(settings, rt, client, manifest)
                        _print_results(settings, rt, client)
                finally:
                    close_extractor(extractor)
            finally:
                pool.close()


def _cycles(settings: Settings, rt: Runtime, client: FhirClient, manifest: dict[str, Any]) -> None:
    say(f"FHIR server: {settings.fhir.base_url} (sekmet-fhir, loopback)")
    say(f"engine: {rt.extractor.info.backend} {rt.extractor.info.software_version}")
    say(f"seeded: {seed(client, manifest)} new patients/notes")
    say("cycle 1: " + run_cycle(settings, rt).line())
    say(f"amended: {amend(client, manifest)} notes got a second version")
    say("cycle 2: " + run_cycle(settings, rt).line())


def _print_results(settings: Settings, rt: Runtime, client: FhirClient) -> None:
    with rt.pool.connection() as conn:
        say("\n== each patient's supplements (view patient_supplements) ==")
        for line in report_lines(conn, None, settings.fhir.base_url):
            say(line)
        say("\n== notes without usable text (recorded, not dropped) ==")
        rows = conn.execute(
            "SELECT doc_id, reason FROM document_versions "
            "WHERE state = 'no_text' AND source = %s ORDER BY 1",
            (settings.fhir.base_url,),
        ).fetchall()
        for doc_id, reason in rows:
            say(f"  DocumentReference/{doc_id}: {reason}")
    counts, example = written_back(client, settings.writeback.identifier_system)
    say("\n== written back to the FHIR server ==")
    for rtype, by_status in counts.items():
        detail = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()) if s)
        say(f"  {rtype}: {sum(by_status.values())}" + (f" ({detail})" if detail else ""))
    if example is not None:
        say("\n== one example resource ==")
        say(json.dumps(example, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=None, help="dsfhir config file")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="extraction engine (default: the configured one, else the lexicon rules)",
    )
    args = parser.parse_args(argv)
    config = args.config or Path(os.environ.get("DSFHIR_CONFIG", "config.toml"))
    # the embedded Postgres warns about an unset XDG_RUNTIME_DIR on servers: harmless here
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        settings = load_settings(config if config.is_file() else None)
        setup_logging("WARNING")
        run(settings, args.backend)
    except DsfhirError as exc:
        sys.stderr.write(f"demo: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
