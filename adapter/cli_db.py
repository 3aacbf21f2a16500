"""``dsfhir db``: apply and inspect schema migrations."""

from __future__ import annotations

import argparse

from adapter import migrate
from adapter.config import Settings
from adapter.db import connect, database_dsn, ensure_vector_available


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="database schema: migrate, status")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    mig = db_sub.add_parser("migrate", help="apply pending migrations in order")
    mig.set_defaults(handler=_migrate)
    st = db_sub.add_parser("status", help="list applied and pending migrations")
    st.set_defaults(handler=_status)


def _where(settings: Settings) -> str:
    if settings.database.dsn.get_secret_value():
        return "external Postgres (database.dsn)"
    return f"embedded Postgres in {settings.state_dir / 'pg'}"


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    with database_dsn(settings.database, settings.state_dir) as dsn:
        with connect(dsn, settings.database.connect_timeout_s) as conn:
            ensure_vector_available(conn)
            applied = migrate.apply_pending(conn, migrate.default_migrations_dir())
    if applied:
        for mig in applied:
            print(f"applied {mig.version} {mig.name}")
    else:
        print("nothing to apply: schema is up to date")
    print(f"database: {_where(settings)}")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    with database_dsn(settings.database, settings.state_dir) as dsn:
        with connect(dsn, settings.database.connect_timeout_s) as conn:
            rows = migrate.status(conn, migrate.default_migrations_dir())
    print(f"database: {_where(settings)}")
    for row in rows:
        state = "applied" if row.applied else "pending"
        print(f"{row.migration.version}  {state:8}  {row.migration.name}")
    pending = sum(not r.applied for r in rows)
    print(f"{len(rows) - pending} applied, {pending} pending")
    return 0
