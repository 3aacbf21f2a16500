"""Model worker processes (extraction.parallel): the same answers as the backend in this
process, errors carried back by type, a dead worker reported."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from extraction.api import EngineInfo
from extraction.errors import ModelLoadError
from extraction.lexicon import Lexicon
from extraction.parallel import ProcessBackend, WorkerError, deal
from extraction.pipeline import NotePipeline, SentenceResult
from extraction.rules import RulesBackend

REPO = Path(__file__).resolve().parent.parent
SENTENCES = [
    "Takes fish oil for high triglycerides.",
    "Stopped ginkgo after easy bruising.",
    "Melatonin 3 mg at night for insomnia, started last week.",
    "No supplements.",
    "Magnesium for leg cramps; turmeric was stopped because of nausea.",
]


# Module-level builders: a spawned worker imports this module to call them.
def rules() -> RulesBackend:
    lexicon = Lexicon.load(REPO / "data/lexicon/supplements.tsv")
    return RulesBackend(lexicon, ["high triglycerides", "insomnia", "leg cramps", "nausea"])


class Picky:
    """Rules that reject any batch holding the word BOOM."""

    def __init__(self) -> None:
        self.inner = rules()

    @property
    def info(self) -> EngineInfo:
        return self.inner.info

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        if any("BOOM" in s for s in sentences):
            raise ValueError("sentence rejected")
        return self.inner.predict(sentences)


class Fragile(Picky):
    """Rules that die on DIE, and fail with an exception pickle cannot carry on OPAQUE."""

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        if any("DIE" in s for s in sentences):
            os._exit(3)
        if any("OPAQUE" in s for s in sentences):
            raise Unpicklable(f"could not read {sentences[0]!r}")
        return super().predict(sentences)


class Stuck(Picky):
    """Rules that never answer a batch holding HANG."""

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        if any("HANG" in s for s in sentences):
            time.sleep(3600)
        return super().predict(sentences)


def stuck_at_start() -> RulesBackend:
    time.sleep(3600)
    return rules()


class Unpicklable(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("not picklable")


def broken() -> RulesBackend:
    raise ModelLoadError("no LoRA adapter in /nowhere")


def _content(res: SentenceResult) -> tuple[object, ...]:
    rec = res.record
    return rec.text, rec.entities, rec.relations, rec.usage, res.unparseable, res.dropped_spans


def test_deal_gives_each_index_once_mixing_long_and_short() -> None:
    assert deal([5, 1, 9, 3, 7], 2) == [[2, 0, 1], [4, 3]]
    assert deal([], 3) == [[], [], []]


def test_workers_answer_like_the_backend_itself() -> None:
    local = rules()
    notes = [" ".join(SENTENCES), SENTENCES[2], "Continue vitamin D. Stopped ginkgo."]
    with ProcessBackend(rules, 2) as pool:
        assert pool.info == local.info
        got = pool.predict(SENTENCES)
        got_notes = NotePipeline(pool).extract(notes)
    # a sentence record's id is its index in the batch the backend saw: compare the rest
    assert [_content(r) for r in got] == [_content(r) for r in local.predict(SENTENCES)]
    want_notes = NotePipeline(local).extract(notes)
    assert [n.to_json() for n in got_notes] == [n.to_json() for n in want_notes]
    assert any(n.supplements for n in got_notes)


def test_a_failing_batch_raises_its_error_and_the_workers_stay_usable() -> None:
    with ProcessBackend(Picky, 2) as pool:
        with pytest.raises(ValueError, match="sentence rejected"):
            pool.predict([*SENTENCES, "BOOM"])
        again = pool.predict(SENTENCES[:2])  # no stale answer left in a pipe
    assert [r.record.text for r in again] == SENTENCES[:2]


def test_a_worker_that_cannot_start_raises_the_reason() -> None:
    with pytest.raises(ModelLoadError, match="/nowhere"):
        ProcessBackend(broken, 2)


def test_a_dead_worker_is_reported_not_waited_for() -> None:
    pool = ProcessBackend(rules, 2)
    try:
        pool._procs[1].kill()
        pool._procs[1].join()
        with pytest.raises(WorkerError, match="model worker 1 exited"):
            pool.predict(SENTENCES)
    finally:
        pool.close()


def test_a_worker_dying_mid_batch_is_reported_and_the_next_call_starts_afresh() -> None:
    with ProcessBackend(Fragile, 2) as pool:
        old = list(pool._procs)
        with pytest.raises(WorkerError, match=r"exited \(exit code 3\)"):
            pool.predict(["DIE now please, this is the longest sentence", *SENTENCES[:3]])
        assert not any(p.is_alive() for p in old)  # the survivor was stopped too
        again = pool.predict(SENTENCES)
        assert [_content(r) for r in again] == [_content(r) for r in rules().predict(SENTENCES)]
        assert all(p.is_alive() for p in pool._procs) and pool._procs[0] not in old
    assert not any(p.is_alive() for p in pool._procs)


def test_a_hung_worker_is_stopped_after_its_time_limit_and_replaced() -> None:
    with ProcessBackend(Stuck, 2, sentence_timeout=0.5) as pool:
        old = list(pool._procs)
        began = time.monotonic()
        with pytest.raises(WorkerError, match="no answer within its time limit"):
            pool.predict(["HANG: the longest sentence of this batch", *SENTENCES[:3]])
        assert time.monotonic() - began < 30
        assert not any(p.is_alive() for p in old)  # both stopped, the busy one killed
        again = pool.predict(SENTENCES)
        assert [_content(r) for r in again] == [_content(r) for r in rules().predict(SENTENCES)]


class Miscounting(Picky):
    """Rules that answer one sentence too few for a batch holding SHORT."""

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        results = super().predict(sentences)
        return results[:-1] if any("SHORT" in s for s in sentences) else results


def test_a_malformed_answer_stops_the_workers_and_the_next_call_starts_afresh() -> None:
    with ProcessBackend(Miscounting, 2) as pool:
        old = list(pool._procs)
        with pytest.raises(ValueError):
            pool.predict(["SHORT: the longest sentence of them all here", *SENTENCES])
        assert not any(p.is_alive() for p in old)  # no answer can be left in a pipe
        again = pool.predict(SENTENCES)
    assert [_content(r) for r in again] == [_content(r) for r in rules().predict(SENTENCES)]


class Slow(Picky):
    """Rules that take 0.8 s per call."""

    def predict(self, sentences: Sequence[str]) -> list[SentenceResult]:
        time.sleep(0.8)
        return super().predict(sentences)


def test_a_worker_reporting_progress_is_not_taken_for_hung() -> None:
    # Each one-sentence part has 2 x 0.5 s; the six parts take 4.8 s in all, more than a
    # deadline for the whole share (7 x 0.5 s) would allow.
    with ProcessBackend(Slow, 1, sentence_timeout=0.5, progress_every=1) as pool:
        got = pool.predict(SENTENCES + SENTENCES[:1])
    assert [r.record.text for r in got] == SENTENCES + SENTENCES[:1]


def test_a_hang_late_in_a_large_batch_is_caught_within_one_part() -> None:
    batch = [f"{s} (copy {n})" for n in range(8) for s in SENTENCES] + ["HANG"]
    with ProcessBackend(Stuck, 1, sentence_timeout=0.5, progress_every=2) as pool:
        began = time.monotonic()
        with pytest.raises(WorkerError, match="no answer within its time limit"):
            pool.predict(batch)  # "HANG", the shortest, is the last part
        # a deadline for the whole share would be 42 x 0.5 = 21 s
        assert time.monotonic() - began < 10


def test_sentences_the_gate_rejects_are_answered_here_and_never_sent() -> None:
    lexicon = Lexicon.load(REPO / "data/lexicon/supplements.tsv")
    batch = [*SENTENCES, "BOOM: no supplement named here."]  # would fail in Picky
    with ProcessBackend(Picky, 2, gate=lexicon.mentions_any) as pool:
        got = pool.predict(batch)
    assert [r.record.text for r in got] == batch
    assert [_content(r) for r in got] == [_content(r) for r in rules().predict(batch[:-1])] + [
        (batch[-1], (), (), (), {}, 0)
    ]


def test_a_worker_that_never_finishes_starting_is_stopped() -> None:
    with pytest.raises(WorkerError, match=r"no answer .*\(starting\)"):
        ProcessBackend(stuck_at_start, 1, start_timeout=2)
    assert not mp.active_children()  # the stuck worker was killed and reaped


def test_an_error_pickle_cannot_carry_comes_back_as_its_type_without_the_text() -> None:
    with ProcessBackend(Fragile, 1) as pool:
        with pytest.raises(WorkerError) as info:
            pool.predict(["OPAQUE: Takes fish oil."])
        assert "Unpicklable" in str(info.value) and "fish oil" not in str(info.value)
        assert len(pool.predict(SENTENCES[:1])) == 1  # the worker stayed usable


def test_close_stops_every_worker() -> None:
    pool = ProcessBackend(rules, 2)
    procs = list(pool._procs)
    pool.close()
    assert procs and not any(p.is_alive() for p in procs)


def test_llm_engine_in_two_workers_matches_one_process(base_dir: Path, tmp_path: Path) -> None:
    """`[extraction] workers = 2` over the real model and shipped adapter: same notes out."""
    from adapter.config import load_settings
    from adapter.engine import opened_extractor

    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[model]\nbase = "{base_dir}"\nadapter = "{REPO / "models/ramie-smollm2"}"\n'
        "threads = 1\nbatch_size = 4\n"
        f'[extraction]\nbackend = "llm"\nlexicon = "{REPO / "data/lexicon/supplements.tsv"}"\n'
        f'event_terms = "{REPO / "data/corpus/train.jsonl"}"\n'
    )
    notes = [" ".join(SENTENCES[:3]), " ".join(SENTENCES[3:])]
    results = {}
    for workers in (1, 2):
        settings = load_settings(cfg, {"DSFHIR_EXTRACTION__WORKERS": str(workers)})
        with opened_extractor(settings, None) as extractor:
            backend = getattr(extractor, "backend", None)
            assert isinstance(backend, ProcessBackend) == (workers > 1)
            results[workers] = [r.to_json() for r in extractor.extract(notes)]
            info = extractor.info
        assert info.backend == "llm" and info.adapter.startswith("ramie-smollm2@")
    assert results[2] == results[1]
    assert any(r["supplements"] for r in results[1])
