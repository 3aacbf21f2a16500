"""Plain numbered SQL migrations, applied in order, each in its own transaction."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from adapter.errors import DatabaseError, MigrationError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
# Serialises migrators across processes (two workers starting together).
_LOCK_KEY = 0x64_73_66_68  # "dsfh"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def sql_text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    migration: Migration
    applied: bool


def default_migrations_dir() -> Path:
    """The ``migrations/`` folder shipped next to the packages."""
    return Path(__file__).resolve().parent.parent / "migrations"


def discover(directory: Path) -> list[Migration]:
    """Every ``NNNN_name.sql`` file in ``directory``, in version order."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_name.sql")
        if m["version"] in found:
            raise MigrationError(f"two migrations share version {m['version']}")
        found[m["version"]] = Migration(m["version"], m["name"], path)
    return [found[v] for v in sorted(found)]


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    conn.execute(_BOOKKEEPING)
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {str(v): str(c) for v, c in rows}


def status(conn: psycopg.Connection[tuple[object, ...]], directory: Path) -> list[MigrationStatus]:
    """Which migrations are applied and which are pending."""
    with conn.transaction():
        done = _applied(conn)
    return [MigrationStatus(m, m.version in done) for m in discover(directory)]


def apply_pending(conn: psycopg.Connection[tuple[object, ...]], directory: Path) -> list[Migration]:
    """Apply every pending migration in order; return those applied (empty = nothing to do).

    A failing file is rolled back alone; the ones before it stay applied and recorded.
    """
    migrations = discover(directory)
    applied: list[Migration] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        with conn.transaction():
            done = _applied(conn)
        for mig in migrations:
            if mig.version in done:
                if done[mig.version] != mig.checksum:
                    log.warning("migration %s changed after it was applied", mig.path.name)
                continue
            _apply_one(conn, mig)
            applied.append(mig)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def _apply_one(conn: psycopg.Connection[tuple[object, ...]], mig: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(sql.SQL(mig.sql_text))  # trusted file shipped with the code
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (mig.version, mig.name, mig.checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(
            f"migration {mig.path.name} failed and was rolled back: {exc}"
        ) from exc
    log.info("applied migration %s", mig.path.name)


def ensure_migrated(conn: psycopg.Connection[tuple[object, ...]], directory: Path) -> None:
    """Refuse to run against a database whose schema is behind the code."""
    pending = [s.migration.path.name for s in status(conn, directory) if not s.applied]
    if pending:
        raise DatabaseError(
            f"database schema is behind: pending migrations {', '.join(pending)}; "
            "run 'dsfhir db migrate'"
        )
