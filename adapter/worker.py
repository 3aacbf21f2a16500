"""The scheduled worker: an apscheduler interval or cron job, stopped gracefully on SIGTERM.

The job never overlaps itself in one process (``max_instances=1``, missed runs coalesced);
across processes a Postgres advisory lock per source (see :class:`adapter.store.Store`)
makes a second worker skip the cycle instead of processing the same notes. A stop request
lets the running cycle finish its current page (so the watermark stays consistent) and then
the process exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from adapter.config import ScheduleConfig
from adapter.errors import ConfigError

log = logging.getLogger(__name__)

Cycle = Callable[[threading.Event], object]


def make_trigger(schedule: ScheduleConfig) -> BaseTrigger:
    """The configured trigger; a bad crontab is a ConfigError naming the key."""
    if schedule.mode == "cron":
        try:
            return CronTrigger.from_crontab(schedule.cron, timezone=UTC)
        except ValueError as exc:
            raise ConfigError(
                f"[schedule] cron: {schedule.cron!r} is not a crontab: {exc}"
            ) from exc
    return IntervalTrigger(minutes=schedule.interval_minutes, timezone=UTC)


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM / SIGINT request a graceful stop (the main thread only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing the current page, then stopping",
                 signal.Signals(signum).name)  # fmt: skip
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_worker(
    cycle: Cycle,
    trigger: BaseTrigger,
    stop: threading.Event,
    run_now: bool = True,
) -> None:
    """Run ``cycle(stop)`` on ``trigger`` until ``stop`` is set; wait for a running cycle."""
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    scheduler = BackgroundScheduler(timezone=UTC)
    # apscheduler reads next_run_time=None as "paused": only pass it to start at once
    first = {"next_run_time": datetime.now(UTC)} if run_now else {}
    scheduler.add_job(
        cycle,
        trigger,
        args=[stop],
        id="sync",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
        **first,
    )
    scheduler.start()
    log.info("worker started; next cycle at %s", scheduler.get_job("sync").next_run_time)
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)
        log.info("worker stopped")
