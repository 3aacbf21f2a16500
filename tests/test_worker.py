"""The worker: schedule, no overlap, the per-source advisory lock, graceful SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from adapter import migrate
from adapter.config import FhirConfig, ScheduleConfig, Settings
from adapter.errors import ConfigError
from adapter.fhir_client import FhirClient
from adapter.store import Store
from adapter.sync import build_syncer
from adapter.worker import make_trigger, run_worker
from tests.fhir_server import config_toml, docref, make_extractor, patient, run_sekmet

BASE = "https://ehr.example.org/fhir"


def test_triggers_follow_the_schedule_config() -> None:
    interval = make_trigger(ScheduleConfig(mode="interval", interval_minutes=5))
    assert isinstance(interval, IntervalTrigger) and interval.interval.total_seconds() == 300
    cron = make_trigger(ScheduleConfig(mode="cron", cron="0 2 * * *"))
    assert isinstance(cron, CronTrigger)
    with pytest.raises(ConfigError, match=r"\[schedule\] cron"):
        make_trigger(ScheduleConfig(mode="cron", cron="every night"))


def test_cycles_run_on_the_trigger_never_overlap_and_stop_cleanly() -> None:
    stop = threading.Event()
    state = {"calls": 0, "running": 0, "overlap": False}
    lock = threading.Lock()

    def cycle(stop_event: threading.Event) -> None:
        with lock:
            state["running"] += 1
            state["overlap"] |= state["running"] > 1
            state["calls"] += 1
        time.sleep(0.3)  # longer than the interval: the next run must wait, not overlap
        with lock:
            state["running"] -= 1
            if state["calls"] >= 3:
                stop.set()

    worker = threading.Thread(target=run_worker, args=(cycle, IntervalTrigger(seconds=0.1), stop))
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert state["calls"] >= 3 and not state["overlap"] and state["running"] == 0


@pytest.fixture
def dsn(fresh_dsn: str) -> Iterator[str]:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        migrate.apply_pending(conn, migrate.default_migrations_dir())
    yield fresh_dsn


def test_a_second_worker_skips_a_source_that_is_being_synced(dsn: str) -> None:
    def no_server(request: httpx.Request) -> httpx.Response:
        raise AssertionError("a locked-out worker must not touch the FHIR server")

    settings = Settings(fhir=FhirConfig(base_url=BASE))
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn) as other:
        with Store(holder, BASE).source_lock() as got:
            assert got
            client = FhirClient(BASE, transport=httpx.MockTransport(no_server))
            syncer = build_syncer(settings, client=client, conn=other, extractor=make_extractor())
            summary = syncer.run_cycle()
            assert summary.locked_out
        with Store(other, BASE).source_lock() as got_after_release:
            assert got_after_release
        with Store(holder, BASE + "/other").source_lock() as other_source:
            assert other_source  # the lock is per source


def test_worker_process_syncs_then_stops_gracefully_on_sigterm(
    tmp_path: Path, dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_sekmet(tmp_path_factory.mktemp("worker-fhir")) as server:
        server.put(patient("p1"))
        server.put(docref("n1", "p1", "Takes vitamin D3 daily."))
        config = tmp_path / "config.toml"
        config.write_text(config_toml(server.base_url, dsn, tmp_path / "state", tmp_path))
        proc = subprocess.Popen(
            [sys.executable, "-m", "adapter.cli", "--config", str(config), "worker"],
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = wait_for(proc, "sync cycle ok")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        rest = proc.stderr.read() if proc.stderr else ""
    assert rc == 0
    assert "notes seen=1 processed=1" in lines[-1]
    assert "worker stopped" in rest
    log = "\n".join(lines) + rest
    assert "Takes vitamin D3" not in log and "Patient/p1" not in log  # no PHI at INFO
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT state FROM document_versions").fetchall() == [("done",)]


def wait_for(proc: subprocess.Popen[str], marker: str, timeout: float = 90) -> list[str]:
    """stderr lines up to the first containing ``marker``."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line.rstrip())
        if marker in line:
            return lines
    proc.kill()
    raise AssertionError("worker never logged " + marker + ":\n" + "\n".join(lines))
