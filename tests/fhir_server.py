"""A real sekmet-fhir R4 server on a free loopback port, one data dir per test.

``sekmet serve -c ABSOLUTE/settings.yaml``: the settings file must exist (a missing one is
silently ignored and the server listens on 0.0.0.0:8090) and ``base_url`` must carry the
same port (it is used in links and as the token audience).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SEKMET = Path(sys.executable).parent / "sekmet"


@dataclass
class SmartClientSpec:
    client_id: str
    public_key_path: Path
    scopes: str = "system/*.*"


@dataclass
class SekmetServer:
    base_url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    _http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(base_url=self.base_url + "/", timeout=10.0)

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/fhir")

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Create or update a resource with its own id; the stored version comes back."""
        resp = self._http.put(f"{resource['resourceType']}/{resource['id']}", json=resource)
        resp.raise_for_status()
        return dict(resp.json())

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        """Every match of a search (all pages) as resources."""
        out: list[dict[str, Any]] = []
        resp = self._http.get(resource_type, params={"_count": "1000", **params})
        resp.raise_for_status()
        bundle = resp.json()
        out += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        return out

    def read(self, resource_type: str, rid: str) -> dict[str, Any]:
        resp = self._http.get(f"{resource_type}/{rid}")
        resp.raise_for_status()
        return dict(resp.json())

    def history_count(self, resource_type: str) -> int:
        """How many versions of this type were ever written (creates + updates)."""
        resp = self._http.get(f"{resource_type}/_history", params={"_count": "1"})
        resp.raise_for_status()
        return int(resp.json()["total"])

    def close(self) -> None:
        self._http.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings_yaml(
    port: int, data_dir: Path, smart_clients: list[SmartClientSpec], token_lifetime: int
) -> str:
    auth: dict[str, Any] = {"types": ["none"]}
    if smart_clients:
        auth = {
            "types": ["smart"],
            "token_lifetime": token_lifetime,
            "smart_clients": [
                {"client_id": c.client_id, "public_key_path": str(c.public_key_path),
                 "scopes": c.scopes}
                for c in smart_clients
            ],
        }  # fmt: skip
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "base_url": f"http://127.0.0.1:{port}/fhir",
        "data_dir": str(data_dir),
        "server_auth": auth,
        "simulator": {"enabled": False},
        "log_inbound": False,
        "own_private_key_path": str(data_dir / "sekmet_private.pem"),
    }
    return json.dumps(settings, indent=2)  # JSON is valid YAML


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sekmet exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/metadata", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"sekmet did not start: {log_path.read_text()[-2000:]}")


def _spawn(
    workdir: Path, smart_clients: list[SmartClientSpec], token_lifetime: int
) -> SekmetServer:
    """Start the process (not yet ready: see :func:`_wait_ready`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = (workdir / "settings.yaml").resolve()
    config.write_text(
        _settings_yaml(port, (workdir / "data").resolve(), smart_clients, token_lifetime)
    )
    log_path = workdir / "sekmet.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(SEKMET), "serve", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    return SekmetServer(f"http://127.0.0.1:{port}/fhir", workdir / "data", proc, log_path)


def _stop(server: SekmetServer) -> None:
    server.close()
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextmanager
def run_sekmet(
    workdir: Path,
    smart_clients: list[SmartClientSpec] | None = None,
    token_lifetime: int = 3600,
) -> Iterator[SekmetServer]:
    """Start sekmet on a free loopback port with its own data dir; stop it afterwards."""
    server = _spawn(workdir, smart_clients or [], token_lifetime)
    try:
        _wait_ready(server.base_url, server.process, server.log_path)
        yield server
    finally:
        _stop(server)


class SekmetLauncher:
    """Hands out fresh no-auth servers (one data dir each) while the next one boots.

    A cold start costs seconds of imports on a busy machine; starting the spare while a
    test runs hides it.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._count = 0
        self._spare = self._next()

    def _next(self) -> SekmetServer:
        self._count += 1
        return _spawn(self._root / f"server{self._count}", [], 3600)

    @contextmanager
    def server(self) -> Iterator[SekmetServer]:
        server, self._spare = self._spare, self._next()
        try:
            _wait_ready(server.base_url, server.process, server.log_path)
            yield server
        finally:
            _stop(server)

    def close(self) -> None:
        _stop(self._spare)


# ---- test data: a small supplement lexicon, the real rules engine, notes ------------------

# Fixture codes for the mapper/sync tests (not checked RxCUIs/UNIIs).
LEXICON_ROWS = [
    ("vitamin d", ("vitamin d3", "cholecalciferol"), "900001", "FIXUNII01"),
    ("fish oil", ("omega-3", "omega 3"), "900002", ""),
    ("magnesium", ("magnesium oxide",), "", ""),
    ("melatonin", (), "900004", ""),
    ("turmeric", ("curcumin",), "", ""),
    ("ginkgo", ("ginkgo biloba",), "", ""),
    ("iron", ("ferrous sulfate",), "", ""),
    ("probiotic", ("probiotics",), "", ""),
]
EVENT_TERMS = [
    "nausea", "bruising", "insomnia", "joint pain", "constipation", "heartburn", "fatigue",
    "muscle cramps", "anxiety", "low mood", "sleep",
]  # fmt: skip


def make_lexicon() -> Any:
    from extraction.lexicon import Lexicon, LexiconEntry

    return Lexicon(
        [LexiconEntry(n, "test", s, (), (), rx, unii, "fixture") for n, s, rx, unii in LEXICON_ROWS]
    )


def make_extractor() -> Any:
    """The real rules engine (no model) behind the Extractor interface."""
    from extraction.pipeline import NotePipeline
    from extraction.rules import RulesBackend

    return NotePipeline(RulesBackend(make_lexicon(), EVENT_TERMS), options="rules-test")


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Test", "given": [pid]}]}


def docref(
    doc_id: str,
    patient_id: str,
    text: str | None = None,
    *,
    date: str = "2025-03-01T10:00:00Z",
    content_type: str = "text/plain; charset=utf-8",
    url: str | None = None,
    raw: bytes | None = None,
    status: str = "current",
    **extra: Any,
) -> dict[str, Any]:
    """A DocumentReference with one attachment (inline text, raw bytes, or a url)."""
    import base64

    attachment: dict[str, Any] = {"contentType": content_type}
    if url is not None:
        attachment["url"] = url
    else:
        data = raw if raw is not None else (text or "").encode("utf-8")
        attachment["data"] = base64.b64encode(data).decode("ascii")
    return {
        "resourceType": "DocumentReference",
        "id": doc_id,
        "status": status,
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": date,
        "content": [{"attachment": attachment}],
        **extra,
    }


def write_engine_files(directory: Path) -> tuple[Path, Path]:
    """The fixture lexicon as a supplements.tsv and the event terms as a list, for configs."""
    directory.mkdir(parents=True, exist_ok=True)
    lexicon = directory / "supplements.tsv"
    header = "normalized\tcategory\tsynonyms\tbrands\tmisspellings\trxcui\tunii\tcode_source\n"
    rows = [
        f"{n}\ttest\t{'|'.join(s)}\t\t\t{rx}\t{unii}\tfixture\n" for n, s, rx, unii in LEXICON_ROWS
    ]
    lexicon.write_text(header + "".join(rows), encoding="utf-8")
    events = directory / "events.txt"
    events.write_text("\n".join(EVENT_TERMS) + "\n", encoding="utf-8")
    return lexicon, events


def config_toml(base_url: str, dsn: str, state_dir: Path, engine_dir: Path, **extra: str) -> str:
    """A dsfhir config.toml for a test server and database (rules engine, no lag)."""
    lexicon, events = write_engine_files(engine_dir)
    sections = {
        "paths": f'state_dir = "{state_dir}"',
        "database": f'dsn = "{dsn}"',
        "fhir": f'base_url = "{base_url}"\nsafety_lag_s = 0\noverlap_s = 0',
        "extraction": f'backend = "lexicon"\nlexicon = "{lexicon}"\nevent_terms = "{events}"',
        "schedule": "interval_minutes = 60",
    }
    for section, body in extra.items():
        sections[section] = sections.get(section, "") + "\n" + body
    return "".join(f"[{name}]\n{body}\n\n" for name, body in sections.items())
