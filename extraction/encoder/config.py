"""Training hyper-parameters (kept free of torch imports so the CLI starts fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 1e-4  # encoder; the new heads learn 10x faster
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 128
    seed: int = 13
    threads: int = 2
    checkpoint_every: int = 100  # optimiser steps between checkpoints
    max_steps: int | None = None  # stop early (tests, smoke runs)
    # > 0: train LoRA adapters of this rank on the encoder's linear layers (plus the heads)
    # instead of every weight; the saved model is then a few MB (fp16) and ships with the
    # repo (models/ds-encoder). LoRA weights learn at the heads' rate (10 x learning_rate).
    # 0: every weight but the word embeddings (~47 MB; sessions 1-5's encoder, 3 epochs).
    lora_rank: int = 32
    lora_alpha: int = 64
