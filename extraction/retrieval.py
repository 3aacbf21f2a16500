"""The demonstration index: k most similar training examples of the same task (RAMIE).

Examples live in the Postgres table ``retrieval_examples`` (migration 0002) with the
embedding of their input only: embedding the target as well would let gold answers steer
which neighbours a query gets (the leak in RAMIE's released code). A query never gets
itself back: examples whose normalised input equals the query's are excluded, which is how
training-time retrieval masks the item and its copies, and callers may exclude ids too.
Neighbours come back least similar first, so the most similar one sits last, adjacent to
the input in the prompt (RUIE's ordering).

This module only uses the connection pool it is given (pgvector types registered on each
connection), so it behaves the same on the embedded server and on an external Postgres.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from extraction.errors import RetrievalError

# Must match the column type in migrations/0002_retrieval_examples.sql.
EMBEDDING_DIM = 384
# Extra candidates asked of the HNSW graph beyond k, so post-scan filters still leave k.
OVERFETCH = 10
# HNSW candidate-list size: 100 gave exact top-3 on clustered data at ~9k rows, 1.2 ms a
# query; pgvector refuses more than 1000.
EF_SEARCH_RANGE = (100, 1000)
# Iterative index scans (pgvector >= 0.8) keep walking the graph until the filters are met.
ITERATIVE_SCAN_SINCE = (0, 8)

MIGRATE_HINT = "run 'dsfhir db migrate'"
BUILD_HINT = "run 'dsfhir index build'"

Connection = psycopg.Connection[TupleRow]
Vectors = npt.NDArray[np.float32]

_STATE = """
SELECT to_regclass('retrieval_examples') IS NOT NULL,
       (SELECT extversion FROM pg_extension WHERE extname = 'vector')
"""
_TASK_HAS_ROWS = "SELECT EXISTS (SELECT 1 FROM retrieval_examples WHERE task = %s)"
_COUNT_ALL = "SELECT count(*) FROM retrieval_examples"
_COUNT_TASK = "SELECT count(*) FROM retrieval_examples WHERE task = %s"
_VERSIONS = "SELECT DISTINCT index_version FROM retrieval_examples"
# Self-conflicting (two rebuilds queue up instead of colliding on keys) yet compatible with
# the ACCESS SHARE of readers, who keep querying the old rows until commit.
_LOCK_WRITERS = "LOCK TABLE retrieval_examples IN EXCLUSIVE MODE"
_DELETE_ALL = "DELETE FROM retrieval_examples"
_COPY = """
COPY retrieval_examples (task, example_id, input, target, input_key, embedding, index_version)
FROM STDIN WITH (FORMAT BINARY)
"""
_COPY_TYPES = ["text", "text", "text", "text", "text", "vector", "text"]
_EF_SEARCH = "SELECT set_config('hnsw.ef_search', %s, true)"
_ITERATIVE = "SELECT set_config('hnsw.iterative_scan', 'strict_order', true)"
# Exclusions are filtered in SQL rather than after a fixed over-fetch: a clinical corpus
# can hold more copies of one sentence than any fixed margin would cover. The margin in
# LIMIT only serves the tie-break (see _nearest_one).
_NEAREST = """
SELECT example_id, input, target, embedding <=> %(vector)s AS distance
FROM retrieval_examples
WHERE task = %(task)s
  AND input_key <> %(key)s
  AND NOT (example_id = ANY (%(exclude)s::text[]))
ORDER BY distance
LIMIT %(limit)s
"""

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Example:
    """One demonstration: a task's input text and its gold target (model output format)."""

    task: str
    example_id: str
    input: str
    target: str


class Encoder(Protocol):
    """What the index needs from an embedder, e.g. ``extraction.embedding.SentenceEmbedder``."""

    def encode(self, texts: Sequence[str]) -> Vectors:
        """Unit-normalised float32 vectors, one row per text, in order."""
        ...


def input_key(text: str) -> str:
    """The text lower-cased with whitespace runs collapsed: the exact-duplicate key."""
    return _SPACE.sub(" ", text).strip().lower()


class ExampleIndex:
    """Build and query the demonstration pool stored in ``retrieval_examples``."""

    def __init__(self, pool: ConnectionPool[Connection], encoder: Encoder) -> None:
        self._pool = pool
        self._encoder = encoder

    def rebuild(self, examples: Sequence[Example], index_version: str) -> int:
        """Replace every stored example with ``examples`` in one transaction; return the count.

        Only inputs are embedded (never targets). Readers keep seeing the old pool until the
        new one is committed.
        """
        _require_unique(examples)
        vectors = self._embed([e.input for e in examples])
        with _db_errors("index rebuild failed and was rolled back"):
            with self._pool.connection() as conn, conn.transaction():
                _require_table(conn)
                conn.execute(_LOCK_WRITERS)
                conn.execute(_DELETE_ALL)
                _copy_rows(conn, examples, vectors, index_version)
        return len(examples)

    def count(self, task: str | None = None) -> int:
        """How many examples are stored (for one task, or in all)."""
        with _db_errors("cannot count examples"), self._pool.connection() as conn:
            _require_table(conn)
            if task is None:
                row = conn.execute(_COUNT_ALL).fetchone()
            else:
                row = conn.execute(_COUNT_TASK, (task,)).fetchone()
        return int(row[0]) if row is not None else 0

    def versions(self) -> set[str]:
        """The index versions of the stored rows (one after a clean build; empty when empty)."""
        with _db_errors("cannot read the index version"), self._pool.connection() as conn:
            _require_table(conn)
            return {str(row[0]) for row in conn.execute(_VERSIONS).fetchall()}

    def nearest(
        self,
        task: str,
        queries: Sequence[str],
        k: int,
        exclude_ids: Sequence[Collection[str]] | None = None,
    ) -> list[list[Example]]:
        """For each query, its ``k`` nearest examples of ``task``, most similar LAST.

        Never returned: examples whose :func:`input_key` equals the query's (the query
        itself and its exact copies) and, per query, the ids in ``exclude_ids[i]``. Fewer
        than ``k`` come back only when the task's pool has fewer eligible examples.
        """
        if k < 0:
            raise ValueError("k must be >= 0")
        if exclude_ids is not None and len(exclude_ids) != len(queries):
            raise ValueError("exclude_ids needs one collection per query")
        if k == 0 or not queries:
            return [[] for _ in queries]
        excluded = [sorted(ids) for ids in exclude_ids] if exclude_ids else [[] for _ in queries]
        vectors = self._embed(list(queries))
        ef_search = _ef_search(k, max(len(ids) for ids in excluded))
        with _db_errors("retrieval query failed"), self._pool.connection() as conn:
            # One transaction, so the scan settings (is_local) end with it.
            with conn.transaction():
                _prepare_search(conn, task, ef_search)
                return [
                    _nearest_one(conn, task, query, vector, k, ids)
                    for query, vector, ids in zip(queries, vectors, excluded, strict=True)
                ]

    def _embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        vectors = np.asarray(self._encoder.encode(texts), dtype=np.float32)
        if vectors.shape != (len(texts), EMBEDDING_DIM):
            raise RetrievalError(
                f"the embedder returned shape {vectors.shape}, expected "
                f"({len(texts)}, {EMBEDDING_DIM}): use a {EMBEDDING_DIM}-dimensional model "
                "such as all-MiniLM-L6-v2"
            )
        return vectors


def _require_unique(examples: Sequence[Example]) -> None:
    seen: set[tuple[str, str]] = set()
    for example in examples:
        key = (example.task, example.example_id)
        if key in seen:
            raise RetrievalError(f"duplicate example id {example.example_id!r} in {example.task!r}")
        seen.add(key)


def _require_table(conn: Connection) -> tuple[int, ...]:
    """Fail clearly when the migration has not run; return pgvector's version."""
    row = conn.execute(_STATE).fetchone()
    if row is None or not row[0]:
        raise RetrievalError(f"the retrieval_examples table does not exist: {MIGRATE_HINT}")
    return _version(str(row[1] or ""))


def _version(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)[:3]
    return tuple(int(p) for p in parts)


def _copy_rows(
    conn: Connection, examples: Sequence[Example], vectors: Vectors, index_version: str
) -> None:
    with conn.cursor() as cur, cur.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        for example, vector in zip(examples, vectors, strict=True):
            copy.write_row(
                (
                    example.task,
                    example.example_id,
                    example.input,
                    example.target,
                    input_key(example.input),
                    vector,
                    index_version,
                )
            )


def _ef_search(k: int, most_excluded: int) -> int:
    # The graph search must surface more candidates than the filters will drop.
    low, high = EF_SEARCH_RANGE
    return min(high, max(low, 4 * (k + OVERFETCH + most_excluded)))


def _prepare_search(conn: Connection, task: str, ef_search: int) -> None:
    """Check the table and the task's pool, and tune the HNSW scan for this transaction."""
    version = _require_table(conn)
    row = conn.execute(_TASK_HAS_ROWS, (task,)).fetchone()
    if row is None or not row[0]:
        raise RetrievalError(f"the example index has no examples for task {task!r}: {BUILD_HINT}")
    # set_config, not SET: SET cannot take a bound parameter.
    conn.execute(_EF_SEARCH, (str(ef_search),))
    if version >= ITERATIVE_SCAN_SINCE:
        conn.execute(_ITERATIVE)


def _nearest_one(
    conn: Connection,
    task: str,
    query: str,
    vector: npt.NDArray[np.float32],
    k: int,
    exclude: list[str],
) -> list[Example]:
    params = {
        "task": task,
        "key": input_key(query),
        "exclude": exclude,
        "vector": vector,
        "limit": k + OVERFETCH,
    }
    rows = conn.execute(_NEAREST, params).fetchall()
    # Near-copies embed identically (the tokenizer is uncased); break distance ties by id so
    # the same query always gets the same demonstrations in the same order.
    best = sorted(rows, key=lambda r: (float(r[3]), str(r[0])))[:k]
    # Most similar last: it sits next to the input in the prompt.
    return [
        Example(task, str(eid), str(text), str(target)) for eid, text, target, _ in reversed(best)
    ]


@contextmanager
def _db_errors(action: str) -> Iterator[None]:
    """Turn database failures into RetrievalError, without echoing row data."""
    try:
        yield
    except psycopg.Error as exc:
        # The primary message only: DETAIL/CONTEXT lines can quote row data (note text).
        message = exc.diag.message_primary or str(exc).split("\n", 1)[0] or type(exc).__name__
        raise RetrievalError(f"{action}: {message}") from exc
