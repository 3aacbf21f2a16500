"""The encoder trained with LoRA adapters (the form that ships in ``models/``), on the real
MiniLM: a tiny run learns, saves only the adapters and heads (a few MB, fp16), and reloads
(adapters merged into the base weights) to the trained model's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from extraction.corpus import Record
from extraction.encoder.backend import load_backend
from extraction.encoder.config import TrainConfig
from extraction.encoder.model import default_base_dir
from extraction.encoder.train import TrainResult, train
from extraction.errors import ModelLoadError
from tests.conftest import REPO

CORPUS = REPO / "data" / "corpus"
TINY = TrainConfig(
    epochs=6, batch_size=8, learning_rate=3e-4, warmup_fraction=0.1, max_length=64,
    seed=7, threads=1, checkpoint_every=1000, lora_rank=8, lora_alpha=16,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def records(supplement_train_slice: list[Record]) -> list[Record]:
    return supplement_train_slice


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, records: list[Record]) -> TrainResult:
    out = tmp_path_factory.mktemp("encoder-lora")
    return train(default_base_dir(), records, [], out, TINY, progress=lambda _: None)


def test_only_adapters_and_heads_train_and_are_saved(tiny: TrainResult) -> None:
    trainable = {n for n, p in tiny.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or not n.startswith("encoder.") for n in trainable)
    saved = load_file(str(tiny.out_dir / "encoder.safetensors"))
    assert set(saved) == {n for n in tiny.model.state_dict() if n in trainable}
    assert all(t.dtype == torch.float16 for t in saved.values())
    assert (tiny.out_dir / "encoder.safetensors").stat().st_size < 3e6  # full tuning: ~47 MB
    manifest = json.loads((tiny.out_dir / "manifest.json").read_text())
    assert manifest["config"]["lora_rank"] == 8 and manifest["completed"]
    assert tiny.state.losses[-1] < 0.5 * tiny.state.losses[0], tiny.state.losses


def test_reload_merges_the_adapters_and_matches_the_trained_model(
    tiny: TrainResult, records: list[Record]
) -> None:
    reloaded = load_backend(tiny.out_dir, default_base_dir(), lexicon=None, nearest=False)
    from peft.tuners.lora import LoraLayer

    layers = [m for m in reloaded.model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 6 * 6 and all(m.merged for m in layers)  # 6 linears x 6 blocks
    batch = tiny.tokenizer([r.text for r in records[:8]], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    outs = []
    for model in (tiny.model, reloaded.model):
        model.eval()
        with torch.no_grad():
            outs.append(model.ner_logits(ids, mask))
    # fp16 storage of the adapters: equal up to rounding, same labels.
    assert torch.allclose(outs[0], outs[1], atol=0.05)
    assert torch.equal(outs[0].argmax(-1), outs[1].argmax(-1))


def test_weights_missing_an_adapter_are_refused(tiny: TrainResult, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "names.json"):
        (broken / name).write_bytes((tiny.out_dir / name).read_bytes())
    state = load_file(str(tiny.out_dir / "encoder.safetensors"))
    dropped = next(k for k in state if "lora_A" in k)
    save_file({k: v for k, v in state.items() if k != dropped}, str(broken / "encoder.safetensors"))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_backend(broken, default_base_dir(), lexicon=None, nearest=False)


def test_a_lora_run_resumes_exactly_and_refuses_other_settings(
    tmp_path: Path, records: list[Record]
) -> None:
    import dataclasses

    cfg = dataclasses.replace(
        TINY, epochs=1, batch_size=4, max_length=48, checkpoint_every=2, max_steps=4
    )
    base, few = default_base_dir(), records[:8]
    part = tmp_path / "part"
    train(base, few, [], part, dataclasses.replace(cfg, max_steps=2))
    with pytest.raises(ModelLoadError, match="lora_rank"):
        train(base, few, [], part, dataclasses.replace(cfg, lora_rank=4), resume=True)
    resumed = train(base, few, [], part, cfg, resume=True)
    straight = train(base, few, [], tmp_path / "straight", cfg)
    assert resumed.state.losses == straight.state.losses and resumed.state.step == 4
    sa, sb = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
