"""``dsfhir calibrate``: fit the RE/UC label-prior offsets of a trained adapter.

Scores the training instances the adapter never saw (see extraction.calibration), fits one
offset per label against the task's metric, and stores the fit in the adapter's manifest,
where the LLM backend picks it up (``extraction.label_calibration``).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from adapter.config import Settings
from adapter.engine import adapter_dir, base_model_dir
from extraction.calibration import (
    SCORED_TASKS,
    Fit,
    cross_checked_fit,
    gold_index,
    score,
    unseen_instances,
)
from extraction.corpus import load_corpus
from extraction.errors import ModelLoadError
from extraction.llm import file_sha256
from extraction.tasks import ANSWER_PREFIX, Instance, instances, render_prompt
from extraction.training import TrainOptions, options_from_json, options_json

DEFAULT_TRAIN = Path("data/corpus/train.jsonl")
Scorer = Callable[[Sequence[Instance]], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Run:
    """One training run behind an adapter: its options and the corpus it sampled from."""

    options: TrainOptions
    corpus_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"train_options": options_json(self.options), "corpus_sha256": self.corpus_sha256}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit RE/UC label offsets on training instances the adapter never saw",
        description="Writes the fit into the adapter's manifest.json (key 'calibration').",
    )
    p.add_argument("--adapter", type=Path, help="shared adapter dir (default: model.adapter)")
    p.add_argument("--train", type=Path, default=DEFAULT_TRAIN, help="the training corpus")
    p.add_argument("--limit", type=int, default=0, help="at most this many instances per task")
    p.add_argument(
        "--check", type=Path, help="also report the fitted offsets' effect on this corpus (dev)"
    )
    p.add_argument(
        "--threads", type=int, help="torch threads (default: model.threads x extraction.workers)"
    )
    p.set_defaults(handler=_calibrate)


def _run_from(data: dict[str, Any], where: Path) -> Run:
    try:
        options = options_from_json(data["train_options"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: unreadable train_options ({exc})") from exc
    corpus = data.get("corpus_sha256") or next(iter(data.get("corpus", {}).values()), "")
    return Run(options, str(corpus))


def training_runs(adapter: Path) -> list[Run]:
    """Every run behind an adapter: its own, then its warm starts' (recorded in the manifest,
    or read from the warm-start adapter while it is still there, unchanged)."""
    manifest = adapter / "manifest.json"
    if not manifest.is_file():
        raise ModelLoadError(f"{manifest} is missing: cannot tell which instances it saw")
    data = json.loads(manifest.read_text())
    runs = [_run_from(data, manifest)]
    init = data.get("init_adapter") or {}
    if not init:
        return runs
    if "runs" in init:
        return runs + [_run_from(r, manifest) for r in init["runs"]]
    weights = Path(init["path"]) / "adapter_model.safetensors"
    if not weights.is_file() or file_sha256(weights) != init["sha256"]:
        raise ModelLoadError(
            f"{manifest}: warm-start adapter {init['path']} is gone or changed, and the "
            "manifest does not record its training runs"
        )
    return runs + training_runs(Path(init["path"]))


def _unseen(adapter: Path, train: Path) -> tuple[list[Run], list[Instance]]:
    """The runs behind the adapter and the RE/UC instances none of them selected; refused
    when a run sampled another corpus (its "unseen" could hold trained instances)."""
    runs = training_runs(adapter)
    digest = file_sha256(train)
    if any(run.corpus_sha256 != digest for run in runs):
        raise ModelLoadError(f"{adapter} was trained on another corpus than {train}")
    pool = [i for r in load_corpus(train) for i in instances(r)]
    return runs, unseen_instances(pool, [run.options for run in runs])


def _scorer(settings: Settings, adapter: Path, threads: int) -> Scorer:
    from extraction.generate import Generator
    from extraction.llm import adapter_prompt_versions, load_model
    from extraction.llm_backend import option_token_ids

    model = settings.model
    loaded = load_model(base_model_dir(settings), adapter, model.device, model.dtype, threads)
    gen = Generator(loaded, model.batch_size, model.max_new_tokens, model.score_batch_size)
    options = option_token_ids(loaded.tokenizer)
    versions = adapter_prompt_versions(adapter)

    def logits(items: Sequence[Instance]) -> npt.NDArray[np.float32]:
        task = items[0].task
        prompts = [
            render_prompt(task, i.input, [], None, versions[task]) + ANSWER_PREFIX[task]
            for i in items
        ]
        return np.asarray(gen.option_logits(prompts, options[task]), dtype=np.float32)

    return logits


def _calibrate(args: argparse.Namespace, settings: Settings) -> int:
    adapter = args.adapter or adapter_dir(settings)
    if adapter is None or not (adapter / "adapter_config.json").is_file():
        print(f"no shared adapter at {adapter} (per-task adapters are not calibrated)")
        return 1
    runs, unseen = _unseen(adapter, args.train)
    threads = args.threads or settings.single_process_threads(settings.model.threads)
    logits = _scorer(settings, adapter, threads)
    check = [i for r in load_corpus(args.check) for i in instances(r)] if args.check else []
    fits = {}
    for task in SCORED_TASKS:
        items = _sample([i for i in unseen if i.task == task], args.limit)
        if not items:
            raise ModelLoadError(
                f"{adapter} saw every {task} instance of {args.train}: nothing left to fit on"
            )
        fits[task] = cross_checked_fit(
            task, logits(items), [gold_index(task, i.target) for i in items]
        )
        print(_line(fits[task]))
        held = [i for i in check if i.task == task]
        if held:  # reported only: nothing is fitted on this corpus
            gold = np.asarray([gold_index(task, i.target) for i in held])
            raw = logits(held)
            before = score(task, gold, raw.argmax(axis=1))
            after = score(task, gold, (raw + np.asarray(fits[task].offsets)).argmax(axis=1))
            print(f"  {args.check} (gold entities, {len(held)}): {before:.3f} -> {after:.3f}")
    _store(adapter / "manifest.json", fits, runs)
    print(f"calibration written to {adapter / 'manifest.json'}")
    return 0


def _sample(items: Sequence[Instance], limit: int) -> list[Instance]:
    if not limit or len(items) <= limit:
        return list(items)
    return random.Random(7).sample(list(items), limit)


def _line(fit: Fit) -> str:
    metric = "macro-F1" if fit.task == "re" else "accuracy"
    offsets = ", ".join(f"{x:+.2f}" for x in fit.offsets)
    return (
        f"{fit.task}: {fit.n} unseen instances, {metric} {fit.before:.3f} -> {fit.after:.3f} "
        f"(offsets {offsets}; two-fold held-out gain {fit.held_out_gain:+.3f})"
    )


def _store(manifest: Path, fits: dict[str, Fit], runs: Sequence[Run]) -> None:
    data = json.loads(manifest.read_text())
    data["calibration"] = {
        "adapter_sha256": data.get("adapter_sha256", ""),  # the weights it was fitted for
        "tasks": {task: fit.as_dict() for task, fit in fits.items()},
    }
    if data.get("init_adapter"):  # self-contained from now on, wherever the adapter goes
        data["init_adapter"]["runs"] = [run.as_dict() for run in runs[1:]]
    manifest.write_text(json.dumps(data, indent=1) + "\n")
