"""Migrations against the real embedded Postgres."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from adapter import migrate
from adapter.errors import MigrationError


def test_fresh_apply_then_noop(fresh_dsn: str) -> None:
    directory = migrate.default_migrations_dir()
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        first = migrate.apply_pending(conn, directory)
        assert [m.version for m in first] == [m.version for m in migrate.discover(directory)]
        before = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        assert migrate.apply_pending(conn, directory) == []
        after = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        assert before == after
        ext = conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert ext == ("vector",)
        assert all(s.applied for s in migrate.status(conn, directory))
        migrate.ensure_migrated(conn, directory)


def test_failing_migration_rolls_back_and_keeps_earlier(fresh_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE kept (id int);")
    (tmp_path / "0002_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;"
    )
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        with pytest.raises(MigrationError, match=r"0002_broken\.sql"):
            migrate.apply_pending(conn, tmp_path)
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
        assert versions == [("0001",)]
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        assert "kept" in tables
        assert "half_done" not in tables
        pending = [s.migration.version for s in migrate.status(conn, tmp_path) if not s.applied]
        assert pending == ["0002"]


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lower_name"):
        migrate.discover(tmp_path)
