"""A sentence backend spread over worker processes, one model copy each.

On this product's reference CPU (2 cores) two single-threaded processes do about twice the
matrix arithmetic of one process with two torch threads (measured: 2 x 68 GFLOP/s against
~75 for one process; torch's intra-op threads scale poorly on the small matrices of a
135M model), so throughput comes from processes, not threads. The note pipeline stays in
the caller: input checks, sentence splitting and note assembly happen once, and only the
flat list of sentences is dealt out, so error messages keep the caller's record indices.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from extraction.api import EngineInfo
from extraction.errors import ExtractionError
from extraction.pipeline import SentenceBackend, SentenceResult

Build = Callable[[], SentenceBackend]


class WorkerError(ExtractionError):
    """A worker process failed to start, died, or returned something unusable."""


def backend_counters(backend: object) -> dict[str, int]:
    """Token and time counters of the LLM inside a backend (itself or a hybrid's part)."""
    parts = [backend, getattr(backend, "ner", None), getattr(backend, "classifier", None)]
    gen = next((g for g in (getattr(b, "gen", None) for b in parts) if g is not None), None)
    if gen is None:
        return {}
    return {
        "prompt_tokens": gen.prompt_tokens,
        "generated_tokens": gen.generated_tokens,
        "computed_tokens": gen.computed_tokens,
        **{f"{part}_ms": int(1000 * sec) for part, sec in gen.seconds.items()},
    }


def _serve(build: Build, conn: Connection) -> None:
    """Worker main loop: build the backend, then answer sentence batches until told to stop."""
    try:
        backend = build()
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ready", backend.info))
    while True:
        try:
            batch = conn.recv()
        except EOFError:  # the parent went away without saying stop
            return
        if batch is None:
            return
        try:
            results = backend.predict(batch)
        except Exception as exc:  # the parent re-raises it; the worker stays usable
            conn.send(("error", _portable(exc)))
            continue
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send(("ok", (results, {**backend_counters(backend), "peak_rss_kb": peak_kb})))


def _portable(exc: Exception) -> Exception:
    """The exception itself if it survives pickling, else a WorkerError naming it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301  # our own object, round-tripped
    except Exception:
        return WorkerError(f"{type(exc).__name__}: {exc}")
    return exc


def deal(lengths: Sequence[int], workers: int) -> list[list[int]]:
    """Sentence indices per worker: sorted by length and dealt in turn, so every worker gets
    a similar mix of long and short sentences (each worker batches its share by length)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[w::workers] for w in range(workers)]


class ProcessBackend:
    """A :class:`~extraction.pipeline.SentenceBackend` whose ``predict`` runs in ``workers``
    processes (spawned: no torch state is forked), each holding the backend ``build`` makes.
    Use as a context manager, or call :meth:`close`."""

    def __init__(self, build: Build, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._counters: list[dict[str, int]] = [{} for _ in range(workers)]
        for n in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(build, child), name=f"dsfhir-model-{n}")
            proc.daemon = True  # never outlives the parent
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        try:
            infos = [self._receive(n) for n in range(workers)]
        except BaseException:
            self.close()
            raise
        self._info: EngineInfo = infos[0]

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def workers(self) -> int:
        return len(self._conns)

    def _receive(self, n: int) -> Any:
        try:
            kind, payload = self._conns[n].recv()
        except (EOFError, OSError) as exc:
            code = self._procs[n].exitcode
            raise WorkerError(f"model worker {n} exited (exit code {code})") from exc
        if kind == "error":
            raise payload
        return payload

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        shares = [s for s in deal([len(t) for t in sentences], self.workers) if s]
        failure: Exception | None = None
        sent = 0
        for n, share in enumerate(shares):
            try:
                self._conns[n].send([sentences[i] for i in share])
            except OSError as exc:
                code = self._procs[n].exitcode
                failure = WorkerError(f"model worker {n} exited (exit code {code})")
                failure.__cause__ = exc
                break
            sent += 1
        out: list[SentenceResult | None] = [None] * len(sentences)
        for n, share in enumerate(shares[:sent]):  # every answer is read, even after a failure
            try:
                results, counters = self._receive(n)
            except Exception as exc:
                failure = failure or exc
                continue
            self._counters[n] = counters
            for i, res in zip(share, results, strict=True):
                out[i] = res
        if failure is not None:
            raise failure
        done = [r for r in out if r is not None]
        if len(done) != len(sentences):
            raise WorkerError(f"model workers answered {len(done)} of {len(sentences)} sentences")
        return done

    def counters(self) -> dict[str, int]:
        """Every worker's latest counters summed (tokens, seconds by part, peak RSS)."""
        total: Counter[str] = Counter()
        for counters in self._counters:
            total.update(counters)
        return dict(total)

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            try:
                conn.send(None)
            except OSError:
                pass  # already gone
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
            conn.close()

    def __enter__(self) -> ProcessBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
