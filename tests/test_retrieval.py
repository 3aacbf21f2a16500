"""The demonstration index against the real embedded Postgres + pgvector and the real MiniLM."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import psycopg
import pytest
import torch
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from adapter import migrate
from adapter.config import DatabaseConfig
from adapter.db import open_pool
from extraction.embedding import SentenceEmbedder
from extraction.errors import RetrievalError
from extraction.retrieval import _NEAREST, Example, ExampleIndex, input_key

FISH = "Patient takes fish oil 1000 mg daily."
NER = [
    Example("ner", "n-fish", FISH, "supplement: fish oil"),
    Example(
        "ner", "n-vitd", "She started vitamin D 2000 IU every morning.", "supplement: vitamin D"
    ),
    Example("ner", "n-cxr", "The chest X-ray shows no acute infiltrate.", "None"),
    Example("ner", "n-bp", "Blood pressure was 128/76 at today's visit.", "None"),
    Example("ner", "n-ginkgo", "He stopped ginkgo biloba before surgery.", "supplement: ginkgo"),
    Example(
        "ner", "n-fish-copy", "  patient takes FISH OIL   1000 mg daily. ", "supplement: fish oil"
    ),
]
RE = [
    Example("re", "r-fish", FISH, "fish oil -> none"),
    Example("re", "r-turmeric", "Turmeric caused stomach upset.", "turmeric -> stomach upset"),
]
FISH_QUERY = "Pt is on fish oil 500 mg twice a day."


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceEmbedder]:
    # One thread: on a shared CI box, torch's multi-thread barriers make tiny batches ~20x slower.
    before = torch.get_num_threads()
    yield SentenceEmbedder(threads=1)
    torch.set_num_threads(before)


@pytest.fixture
def migrated_dsn(fresh_dsn: str) -> str:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        migrate.apply_pending(conn, migrate.default_migrations_dir())
    return fresh_dsn


@pytest.fixture
def pool(migrated_dsn: str) -> Iterator[ConnectionPool]:
    pool = open_pool(migrated_dsn, DatabaseConfig())
    yield pool
    pool.close()


@pytest.fixture
def index(pool: ConnectionPool, embedder: SentenceEmbedder) -> ExampleIndex:
    return ExampleIndex(pool, embedder)


@pytest.fixture
def built(index: ExampleIndex) -> ExampleIndex:
    assert index.rebuild(NER + RE, "v1") == len(NER) + len(RE)
    return index


def _ids(neighbours: list[Example]) -> list[str]:
    return [e.example_id for e in neighbours]


def test_input_key_normalises_case_and_whitespace() -> None:
    assert input_key("  Fish\tOIL \n 1000 mg ") == "fish oil 1000 mg"


def test_migration_creates_table_and_indexes(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        column = conn.execute(
            "SELECT format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = 'retrieval_examples'::regclass AND attname = 'embedding'"
        ).fetchone()
        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'retrieval_examples'"
            ).fetchall()
        )
    assert column == ("vector(384)", True)
    assert "hnsw (embedding vector_cosine_ops)" in indexes["retrieval_examples_embedding_hnsw"]
    assert "btree (task)" in indexes["retrieval_examples_task"]
    assert "btree (task, example_id)" in indexes["retrieval_examples_pkey"]


def test_rebuild_replaces_rows_and_counts(built: ExampleIndex, pool: ConnectionPool) -> None:
    assert built.count() == 8
    assert (built.count("ner"), built.count("re"), built.count("nope")) == (6, 2, 0)
    assert built.rebuild(RE, "v2") == 2
    assert (built.count(), built.count("ner")) == (2, 0)
    with pool.connection() as conn:
        versions = conn.execute("SELECT DISTINCT index_version FROM retrieval_examples").fetchall()
    assert versions == [("v2",)]


def test_rebuild_embeds_the_input_only(
    built: ExampleIndex, pool: ConnectionPool, embedder: SentenceEmbedder
) -> None:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT embedding, input_key FROM retrieval_examples WHERE example_id = 'r-turmeric'"
        ).fetchone()
    assert row is not None
    expected = embedder.encode([RE[1].input])[0]
    np.testing.assert_allclose(row[0].to_numpy(), expected, atol=1e-6)
    assert row[1] == "turmeric caused stomach upset."


def test_rebuild_refuses_duplicate_ids_and_keeps_the_old_pool(built: ExampleIndex) -> None:
    with pytest.raises(RetrievalError, match="duplicate example id 'r-fish'"):
        built.rebuild([*RE, RE[0]], "v2")
    assert built.count() == 8


def test_nearest_same_task_most_similar_last(
    built: ExampleIndex, embedder: SentenceEmbedder
) -> None:
    [neighbours] = built.nearest("ner", [FISH_QUERY], k=3)
    assert len(neighbours) == 3
    assert all(e.task == "ner" for e in neighbours)
    assert neighbours[-1].example_id in {"n-fish", "n-fish-copy"}
    query, *vectors = embedder.encode([FISH_QUERY, *(e.input for e in neighbours)])
    similarities = [float(query @ v) for v in vectors]
    assert similarities == sorted(similarities)
    # Other tasks' examples never come back, even when their text is closer.
    [other] = built.nearest("re", [FISH_QUERY], k=5)
    assert _ids(other) == ["r-turmeric", "r-fish"]


def test_query_never_gets_itself_or_exact_copies(built: ExampleIndex) -> None:
    variant = "PATIENT  takes fish oil\t1000 MG daily."
    results = built.nearest("ner", [FISH, variant], k=5)
    for neighbours in results:
        assert len(neighbours) == 4
        assert not {"n-fish", "n-fish-copy"} & set(_ids(neighbours))


def test_exclude_ids_are_per_query(built: ExampleIndex) -> None:
    first, second = built.nearest(
        "ner", [FISH_QUERY, FISH_QUERY], k=2, exclude_ids=[{"n-fish", "n-fish-copy"}, set()]
    )
    assert not {"n-fish", "n-fish-copy"} & set(_ids(first))
    assert len(first) == 2
    assert set(_ids(second)) == {"n-fish", "n-fish-copy"}


def test_hnsw_index_path_gives_the_same_neighbours(
    built: ExampleIndex, migrated_dsn: str, embedder: SentenceEmbedder
) -> None:
    def force_index(conn: psycopg.Connection[Any]) -> None:
        register_vector(conn)
        # Tiny tables are scanned sequentially; forbid that so the HNSW graph is exercised.
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_sort = off")
        conn.commit()

    with ConnectionPool(migrated_dsn, min_size=1, configure=force_index) as forced:
        with forced.connection() as conn:
            params = {"task": "ner", "key": "", "exclude": [], "vector": np.ones(384), "limit": 3}
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + _NEAREST, params).fetchall())
        assert "retrieval_examples_embedding_hnsw" in plan
        via_graph = ExampleIndex(forced, embedder).nearest(
            "ner", [FISH_QUERY, FISH], k=3, exclude_ids=[{"n-vitd"}, set()]
        )
    expected = built.nearest("ner", [FISH_QUERY, FISH], k=3, exclude_ids=[{"n-vitd"}, set()])
    assert [_ids(n) for n in via_graph] == [_ids(n) for n in expected]


class _Untouchable:
    """Stands in for both the pool and the encoder: any use fails the test."""

    def connection(self) -> Any:
        raise AssertionError("k=0 must not touch the database")

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise AssertionError("k=0 must not embed anything")


def test_k_zero_and_no_queries_touch_nothing() -> None:
    untouchable = _Untouchable()
    index = ExampleIndex(cast(ConnectionPool, untouchable), untouchable)
    assert index.nearest("ner", ["a", "b"], k=0) == [[], []]
    assert index.nearest("ner", [], k=3) == []
    with pytest.raises(ValueError, match="k must be"):
        index.nearest("ner", ["a"], k=-1)
    with pytest.raises(ValueError, match="one collection per query"):
        index.nearest("ner", ["a", "b"], k=1, exclude_ids=[set()])


def test_empty_index_asks_for_a_build(index: ExampleIndex) -> None:
    with pytest.raises(RetrievalError, match="dsfhir index build"):
        index.nearest("ner", [FISH], k=1)
    index.rebuild(RE, "v1")
    with pytest.raises(RetrievalError, match=r"task 'ner'.*dsfhir index build"):
        index.nearest("ner", [FISH], k=1)


def test_missing_table_asks_for_a_migration(index: ExampleIndex, migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE retrieval_examples")
    for call in (
        lambda: index.nearest("ner", [FISH], k=1),
        lambda: index.count(),
        lambda: index.rebuild(NER, "v1"),
    ):
        with pytest.raises(RetrievalError, match="dsfhir db migrate"):
            call()


def test_wrong_embedding_size_is_refused(pool: ConnectionPool) -> None:
    class Tiny:
        def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            return np.ones((len(texts), 8), dtype=np.float32)

    with pytest.raises(RetrievalError, match="expected"):
        ExampleIndex(pool, Tiny()).rebuild(RE, "v1")
