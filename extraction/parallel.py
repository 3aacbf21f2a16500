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
import pickle
import resource
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import Any

from extraction.api import EngineInfo
from extraction.corpus import Record
from extraction.errors import WorkerError
from extraction.pipeline import SentenceBackend, SentenceResult

Build = Callable[[], SentenceBackend]
# A worker reports progress after every this many sentences of its share (a multiple of the
# default generation batch; 64 cost ~10% of the ensemble's speed on notes, docs/results.md);
# the hang deadline restarts each time.
PROGRESS_EVERY = 128
# Whether a sentence needs the model at all (the backends' lexicon gate).
Gate = Callable[[str], bool]


__all__ = ["ProcessBackend", "WorkerError", "backend_counters", "deal"]


def backend_counters(backend: object) -> dict[str, int]:
    """Token and time counters of the LLM inside a backend (itself, a hybrid's part or an
    ensemble's voter)."""
    parts = [backend, getattr(backend, "ner", None), getattr(backend, "classifier", None)]
    parts += list(getattr(backend, "finders", ()))
    gen = next((g for g in (getattr(b, "gen", None) for b in parts) if g is not None), None)
    if gen is None:
        return {}
    return {
        "prompt_tokens": gen.prompt_tokens,
        "generated_tokens": gen.generated_tokens,
        "computed_tokens": gen.computed_tokens,
        **{f"{part}_ms": int(1000 * sec) for part, sec in gen.seconds.items()},
    }


def _serve(build: Build, conn: Connection, every: int = PROGRESS_EVERY) -> None:
    """Worker main loop: build the backend, then answer numbered sentence batches until told
    to stop (``None``) or the pipe closes. A batch is worked through ``every`` sentences at
    a time, each part but the last followed by a ``progress`` message (the parent's
    heartbeat: a worker that makes progress is never taken for hung)."""
    # Ctrl-C and a service manager's SIGTERM reach the whole process group: the parent
    # decides when workers stop (it sends None, or kills them), so none dies mid-answer.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        backend = build()
    except Exception as exc:  # reported to the parent, which raises it
        _reply(conn, 0, "error", _portable(exc))
        return
    _reply(conn, 0, "ready", backend.info)
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent went away without saying stop
            return
        if request is None:
            return
        seq, batch = request
        try:
            results: list[SentenceResult] = []
            for start in range(0, len(batch), every):
                if start:
                    _reply(conn, seq, "progress", start)
                results += backend.predict(batch[start : start + every])
        except Exception as exc:  # the parent re-raises it; the worker stays usable
            _reply(conn, seq, "error", _portable(exc))
            continue
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _reply(conn, seq, "ok", (results, {**backend_counters(backend), "peak_rss_kb": peak_kb}))


def _reply(conn: Connection, seq: int, kind: str, payload: object) -> None:
    """Send one answer; one that cannot be pickled becomes a WorkerError naming its type."""
    try:
        conn.send((seq, kind, payload))
    except (TypeError, AttributeError, pickle.PicklingError):
        error = WorkerError(
            f"a model worker's {kind!r} answer ({type(payload).__name__}) "
            "cannot be sent to the caller"
        )
        conn.send((seq, "error", error))


def _portable(exc: Exception) -> Exception:
    """The exception itself if it survives pickling, else a WorkerError naming only its type
    (its message may quote the input)."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301  # our own object, round-tripped
    except Exception:
        return WorkerError(f"{type(exc).__module__}.{type(exc).__name__} in a model worker")
    return exc


def deal(lengths: Sequence[int], workers: int) -> list[list[int]]:
    """Sentence indices per worker: sorted by length and dealt in turn, so every worker gets
    a similar mix of long and short sentences (each worker batches its share by length)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[w::workers] for w in range(workers)]


class ProcessBackend:
    """A :class:`~extraction.pipeline.SentenceBackend` whose ``predict`` runs in ``workers``
    processes (spawned: no torch state is forked), each holding the backend ``build`` makes.
    A call that ends abnormally (a worker died or hung, an interrupt mid-exchange) stops
    every worker, and the next call starts fresh ones: answers can never be matched to the
    wrong batch. A worker is declared hung when it has not started within ``start_timeout``
    seconds, or has not reported progress within ``sentence_timeout`` seconds per sentence
    of its current part (``progress_every`` sentences, plus that much once): generation is
    bounded, so only a stuck process (a native deadlock, a stopped process) overruns that,
    and it is caught as soon in a batch of a million sentences as in one of ten.

    ``gate``: the backend's lexicon gate, when it has one. Sentences it rejects get the
    empty result the backend would give them, here, and are never sent: in notes most
    sentences name no supplement, so the parts (and the model's batches) stay full of
    sentences that need the model. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        build: Build,
        workers: int,
        start_timeout: float = 600.0,
        sentence_timeout: float = 60.0,
        progress_every: int = PROGRESS_EVERY,
        gate: Gate | None = None,
    ) -> None:
        if workers < 1 or progress_every < 1:
            raise ValueError("workers and progress_every must be >= 1")
        if start_timeout <= 0 or sentence_timeout <= 0:
            raise ValueError("worker timeouts must be positive")
        self._build = build
        self._size = workers
        self._start_timeout = start_timeout
        self._sentence_timeout = sentence_timeout
        self._every = progress_every
        self._gate = gate
        self._seq = 0
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._counters: list[dict[str, int]] = [{} for _ in range(workers)]
        self._info: EngineInfo = self._start()

    def _start(self) -> EngineInfo:
        ctx = mp.get_context("spawn")
        try:
            for n in range(self._size):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_serve,
                    args=(self._build, child, self._every),
                    name=f"dsfhir-model-{n}",
                )
                proc.daemon = True  # never outlives the parent
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            deadline = time.monotonic() + self._start_timeout
            infos = [self._receive(n, 0, deadline) for n in range(self._size)]
        except BaseException:
            self._stop(at_once=True)
            raise
        info: EngineInfo = infos[0]
        return info

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def workers(self) -> int:
        return self._size

    def _dead(self, n: int, cause: BaseException) -> WorkerError:
        self._procs[n].join(1)  # reap it, so its exit code is known
        error = WorkerError(f"model worker {n} exited (exit code {self._procs[n].exitcode})")
        error.__cause__ = cause
        return error

    def _hung(self, n: int, seq: int) -> WorkerError:
        return WorkerError(
            f"model worker {n} gave no answer within its time limit "
            f"({'starting' if seq == 0 else f'request {seq}'}): stopped as hung"
        )

    def _read(self, n: int, seq: int) -> tuple[str, Any]:
        """One message of worker ``n`` (ready to be read) for request ``seq``."""
        try:
            got, kind, payload = self._conns[n].recv()
        except (EOFError, OSError) as exc:
            raise self._dead(n, exc) from exc
        if got != seq:
            raise WorkerError(f"model worker {n} answered request {got}, expected {seq}")
        return kind, payload

    def _receive(self, n: int, seq: int, deadline: float) -> Any:
        try:
            ready = self._conns[n].poll(max(0.0, deadline - time.monotonic()))
        except (EOFError, OSError) as exc:
            raise self._dead(n, exc) from exc
        if not ready:
            raise self._hung(n, seq)
        kind, payload = self._read(n, seq)
        if kind == "error":
            raise payload
        return payload

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        if not self._conns:  # the last call ended abnormally: start over
            self._info = self._start()
        todo = [i for i, t in enumerate(sentences) if self._gate is None or self._gate(t)]
        dealt = deal([len(sentences[i]) for i in todo], self._size)
        shares = [[todo[j] for j in share] for share in dealt if share]
        self._seq += 1
        try:
            out, failure = self._exchange(sentences, shares, self._seq)
        except BaseException:  # a worker died or hung, or an interruption or unexpected
            self._stop(at_once=True)  # error mid-exchange: answers may be left in the pipes
            raise
        if failure is not None:
            raise failure  # the backend's own error, every answer read: workers stay usable
        for i in set(range(len(sentences))) - set(todo):
            out[i] = SentenceResult(Record(f"s{i}", sentences[i]))
        done = [r for r in out if r is not None]
        if len(done) != len(sentences):
            raise WorkerError(f"model workers answered {len(done)} of {len(sentences)} sentences")
        return done

    def _deadline(self, remaining: int) -> float:
        part = min(self._every, remaining)
        return time.monotonic() + self._sentence_timeout * (part + 1)

    def _exchange(
        self, sentences: Sequence[str], shares: list[list[int]], seq: int
    ) -> tuple[list[SentenceResult | None], Exception | None]:
        """Send every share and read every answer; the first error a backend raised is
        returned with the results (raising it earlier would leave answers in the pipes)."""
        for n, share in enumerate(shares):
            try:
                self._conns[n].send((seq, [sentences[i] for i in share]))
            except OSError as exc:
                raise self._dead(n, exc) from exc
        out: list[SentenceResult | None] = [None] * len(sentences)
        failure: Exception | None = None
        pending = {n: self._deadline(len(share)) for n, share in enumerate(shares)}
        while pending:  # every answer is read, even after an error
            first = min(pending, key=pending.__getitem__)
            ready = wait(
                [self._conns[n] for n in pending],
                max(0.0, pending[first] - time.monotonic()),
            )
            if not ready:
                raise self._hung(first, seq)  # predict stops every worker
            for n in [n for n in pending if self._conns[n] in ready]:
                kind, payload = self._read(n, seq)
                if kind == "progress":
                    pending[n] = self._deadline(len(shares[n]) - int(payload))
                    continue
                del pending[n]
                if kind == "error" and isinstance(payload, WorkerError):
                    raise payload  # the pipes can no longer be trusted
                if kind == "error":  # the backend's own error: the workers stay usable
                    failure = failure or payload
                    continue
                results, self._counters[n] = payload
                for i, res in zip(shares[n], results, strict=True):
                    out[i] = res
        return out, failure

    def counters(self) -> dict[str, int]:
        """Every worker's latest counters summed (tokens, seconds of work by part, peak RSS)."""
        total: Counter[str] = Counter()
        for counters in self._counters:
            total.update(counters)
        return dict(total)

    def _stop(self, at_once: bool) -> None:
        """Ask every worker to stop (or kill them ``at_once``), then reap them all."""
        for conn, proc in zip(self._conns, self._procs, strict=False):
            try:
                if at_once:
                    proc.kill()
                else:
                    conn.send(None)
            except (OSError, ValueError, AttributeError):
                pass  # never started, or already gone
        deadline = time.monotonic() + 10
        for proc in self._procs:
            if proc.pid is None:
                continue
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def close(self) -> None:
        self._stop(at_once=False)

    def __enter__(self) -> ProcessBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
