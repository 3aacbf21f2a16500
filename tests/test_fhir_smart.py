"""SMART Backend Services against the real sekmet-fhir token endpoint, with real key pairs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from adapter import migrate
from adapter.auth import SmartBackendAuth, SmartCredentials
from adapter.config import AuthConfig, FhirConfig, Settings
from adapter.errors import AuthError
from adapter.fhir_client import FhirClient
from adapter.sync import build_client, build_syncer
from tests.fhir_server import (
    SekmetServer,
    SmartClientSpec,
    docref,
    make_extractor,
    patient,
    run_sekmet,
)

READ_WRITE = (
    "system/DocumentReference.rs system/Binary.r system/MedicationStatement.cu "
    "system/Observation.cu system/Provenance.c"
)
# sekmet authorises a transaction POST on the base as a whole: it needs a wildcard create.
TRANSACTION = READ_WRITE + " system/*.c"
NOTE = "Takes vitamin D3 daily. Started melatonin for insomnia."


def write_keys(directory: Path, name: str, alg: str) -> tuple[Path, Path]:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture(scope="module")
def smart_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SekmetServer, Path]]:
    keys = tmp_path_factory.mktemp("keys")
    _, rs_pub = write_keys(keys, "rs", "RS384")
    _, es_pub = write_keys(keys, "es", "ES384")
    clients = [
        SmartClientSpec("dsfhir-rs", rs_pub),
        SmartClientSpec("dsfhir-es", es_pub),
        SmartClientSpec("read-only", rs_pub, scopes="system/*.rs"),
    ]
    with run_sekmet(tmp_path_factory.mktemp("smart"), smart_clients=clients) as server:
        yield server, keys


def settings_for(server: SekmetServer, keys: Path, client_id: str, **auth: Any) -> Settings:
    alg = "ES384" if client_id == "dsfhir-es" else "RS384"
    key = keys / ("es.pem" if alg == "ES384" else "rs.pem")
    return Settings(
        fhir=FhirConfig(base_url=server.base_url, safety_lag_s=0, overlap_s=0),
        auth=AuthConfig.model_validate(
            {"method": "smart", "client_id": client_id, "private_key_path": key,
             "algorithm": alg, "scopes": TRANSACTION, **auth}
        ),
    )  # fmt: skip


def seed(server: SekmetServer, keys: Path, doc_id: str) -> None:
    """Seed as an EHR-side client with full rights (the adapter's scopes cannot)."""
    admin = settings_for(server, keys, "dsfhir-rs", scopes="system/*.cruds")
    with build_client(admin) as client:
        for resource in (patient("p1"), docref(doc_id, "p1", NOTE)):
            path = f"{resource['resourceType']}/{resource['id']}"
            client.request("PUT", path, json_body=resource)


def migrated(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate.apply_pending(conn, migrate.default_migrations_dir())
    return dsn


@pytest.mark.parametrize(("client_id", "doc_id"), [("dsfhir-rs", "rs1"), ("dsfhir-es", "es1")])
def test_a_full_cycle_runs_on_one_cached_token(
    smart_server: tuple[SekmetServer, Path], fresh_dsn: str, client_id: str, doc_id: str
) -> None:
    server, keys = smart_server
    settings = settings_for(server, keys, client_id)
    seed(server, keys, doc_id)
    with build_client(settings) as client, psycopg.connect(migrated(fresh_dsn)) as conn:
        syncer = build_syncer(settings, client=client, conn=conn, extractor=make_extractor())
        summary = syncer.run_cycle()
        auth = client._auth
        assert isinstance(auth, SmartBackendAuth)
        assert auth.tokens_issued == 1  # the search, Binary reads and writes share one token
    assert summary.error is None
    assert summary.tally.written >= 3  # two statements and the provenance of this note
    done = conn_rows(fresh_dsn, "SELECT doc_id, state FROM document_versions")
    assert (doc_id, "done") in done


def conn_rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


def test_an_unregistered_key_is_refused_by_the_token_endpoint(
    smart_server: tuple[SekmetServer, Path], tmp_path: Path
) -> None:
    server, _ = smart_server
    stranger, _ = write_keys(tmp_path, "stranger", "RS384")
    creds = SmartCredentials("dsfhir-rs", stranger.read_bytes(), "", "RS384", READ_WRITE)
    with FhirClient(server.base_url, auth=SmartBackendAuth(creds, server.base_url)) as client:
        with pytest.raises(AuthError, match="client_assertion verification failed"):
            client.get_json("Patient/p1")


def test_missing_write_scope_records_the_note_and_queues_its_write(
    smart_server: tuple[SekmetServer, Path], fresh_dsn: str
) -> None:
    server, keys = smart_server
    reader = settings_for(server, keys, "read-only", scopes="system/*.rs")
    seed(server, keys, "ro1")
    with build_client(reader) as client, psycopg.connect(migrated(fresh_dsn)) as conn:
        syncer = build_syncer(reader, client=client, conn=conn, extractor=make_extractor())
        summary = syncer.run_cycle()
    assert summary.error is None  # the cycle goes on; the note's write is queued
    assert summary.tally.failed >= 1
    rows = conn_rows(fresh_dsn, "SELECT state, reason FROM document_versions WHERE doc_id = 'ro1'")
    assert rows[0][0] == "write_failed"
    assert "403" in rows[0][1]
    statuses = conn_rows(
        fresh_dsn, "SELECT DISTINCT http_status FROM writeback_log WHERE doc_id = 'ro1'"
    )
    assert statuses == [(403,)]
