"""LoRA instruction fine-tuning of the multi-task model (RAMIE's shared adapter).

Training prompts carry retrieved demonstrations (the example itself and exact duplicates
excluded); the loss covers the response tokens only. Checkpoints (adapter, optimiser,
scheduler, RNG, step) are written every ``checkpoint_every`` steps and a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from extraction.tasks import END, Demo, Hinter, Instance, render_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )  # fmt: skip
    lr: float = 3e-4
    epochs: float = 1.0
    batch_size: int = 8
    max_length: int = 256
    warmup: float = 0.05
    seed: int = 13
    train_k: tuple[int, ...] = (0, 1, 2)  # mixed k: one adapter serves k = 0 .. 3
    max_per_task: tuple[tuple[str, int], ...] = ()  # (task, cap); absent = all instances
    tasks: tuple[str, ...] = ("ner", "re", "uc", "te")
    checkpoint_every: int = 50
    # Warm start: continue from this LoRA adapter (its rank, alpha and targets apply).
    init_adapter: str = ""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


DemoLookup = Callable[[Sequence[Instance], int], Sequence[Sequence[Demo]]]


def select_instances(pool: Sequence[Instance], opts: TrainOptions) -> list[Instance]:
    """The training instances of the chosen tasks, capped per task with a fixed seed."""
    rng = random.Random(opts.seed)
    out: list[Instance] = []
    caps = dict(opts.max_per_task)
    for task in opts.tasks:
        items = [i for i in pool if i.task == task]
        rng.shuffle(items)
        out += items[: caps[task]] if caps.get(task) else items
    return out


def encode(
    tokenizer: Any,
    inst: Instance,
    demos: Sequence[Demo],
    max_length: int,
    hint: Hinter | None,
    version: int | None = None,
) -> Encoded:
    """Token ids with labels masked (-100) on the prompt; demos dropped until it fits."""
    demos = list(demos)
    answer = tokenizer.encode(inst.target + END, add_special_tokens=False)
    while True:
        prompt = tokenizer.encode(
            render_prompt(inst.task, inst.input, demos, hint, version), add_special_tokens=False
        )
        if len(prompt) + len(answer) <= max_length or not demos:
            break
        demos = demos[1:]  # least similar first
    ids = (prompt + answer)[:max_length]
    labels = ([-100] * len(prompt) + answer)[:max_length]
    return Encoded(ids, labels)


def build_encoded(
    tokenizer: Any,
    instances: Sequence[Instance],
    lookup: DemoLookup,
    opts: TrainOptions,
    hint: Hinter | None,
    versions: Mapping[str, int] | None = None,
) -> list[Encoded]:
    """Encode every instance with a seeded number of retrieved demonstrations."""
    rng = random.Random(opts.seed + 1)
    ks = [rng.choice(opts.train_k) for _ in instances]
    demos: list[Sequence[Demo]] = [[] for _ in instances]
    for k in sorted(set(ks)):
        idx = [i for i, kk in enumerate(ks) if kk == k]
        if k == 0 or not idx:
            continue
        for i, found in zip(idx, lookup([instances[i] for i in idx], k), strict=True):
            demos[i] = found
    return [
        encode(tokenizer, inst, d, opts.max_length, hint, (versions or {}).get(inst.task))
        for inst, d in zip(instances, demos, strict=True)
    ]


def batches(data: Sequence[Encoded], opts: TrainOptions, epoch: int) -> list[list[int]]:
    """Length-bucketed, shuffled batches (less padding; order fixed by seed and epoch)."""
    rng = random.Random(opts.seed * 1000 + epoch)
    order = sorted(range(len(data)), key=lambda i: (len(data[i].input_ids), rng.random()))
    chunks = [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    rng.shuffle(chunks)
    return chunks


def collate(data: Sequence[Encoded], idx: Sequence[int], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(data[i].input_ids) for i in idx)
    ids, labels, mask = [], [], []
    for i in idx:
        item = data[i]
        pad = width - len(item.input_ids)
        ids.append(item.input_ids + [pad_id] * pad)  # right padding: positions start at 0
        labels.append(item.labels + [-100] * pad)
        mask.append([1] * len(item.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def options_from_json(data: dict[str, Any]) -> TrainOptions:
    """The TrainOptions a manifest recorded (lists back to tuples; unknown keys refused)."""
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key == "max_per_task":
            value = tuple((task, int(cap)) for task, cap in value)
        fields[key] = tuple(value) if isinstance(value, list) else value
    return TrainOptions(**fields)


def options_json(opts: TrainOptions) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(asdict(opts)))
    return data


def format_eta(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))
