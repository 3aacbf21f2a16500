"""Evaluator: every metric checked against numbers computed by hand (see comments)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter.cli import main
from extraction.corpus import Entity, Record, load_corpus
from extraction.evaluate import load_predictions, score_sentences
from extraction.evaluate_notes import events_overlap, score_notes
from extraction.metrics import bootstrap_ci, max_matching

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def report() -> dict:
    return score_sentences(
        load_corpus(DATA / "eval_gold.jsonl"), load_predictions(DATA / "eval_pred.jsonl")
    )


def test_bookkeeping(report: dict) -> None:
    # g2's prediction line is broken JSON: one invalid line, and g2 counts as missing.
    assert report["records"] == 4
    assert report["missing_predictions"] == 1
    assert report["invalid_prediction_lines"] == 1
    assert report["unparseable"] == {"ner": 0, "te": 1, "re": 1, "uc": 0}


def test_ner_strict_relaxed_and_per_type(report: dict) -> None:
    # gold 7 spans, pred 7 spans; exact: fish oil, ginkgo, easy bruising, melatonin, insomnia.
    strict = report["ner"]["strict"]
    assert (strict["tp"], strict["fp"], strict["fn"]) == (5, 2, 2)
    assert strict["f1"] == pytest.approx(10 / 14, abs=1e-4)
    # "triglycerides" overlaps gold "high triglycerides": relaxed tp 6.
    relaxed = report["ner"]["relaxed"]
    assert (relaxed["tp"], relaxed["fp"], relaxed["fn"]) == (6, 1, 1)
    assert relaxed["f1"] == pytest.approx(12 / 14, abs=1e-4)
    per = report["ner"]["per_type"]
    assert per["supplement_strict"]["f1"] == pytest.approx(0.75, abs=1e-4)
    assert per["event_strict"]["f1"] == pytest.approx(4 / 6, abs=1e-4)
    assert per["event_relaxed"]["f1"] == 1.0
    # strictly matched supplements: fish oil, ginkgo right; "melatonin gummies" wrong.
    assert report["ner"]["normalization_accuracy"] == pytest.approx(2 / 3, abs=1e-4)


def test_te_strict_and_relaxed(report: dict) -> None:
    # gold triples 3; predicted 2 (g4's relation unparseable is no triple).
    assert report["te"]["strict"]["f1"] == pytest.approx(2 / 5, abs=1e-4)  # tp1 fp1 fn2
    assert report["te"]["relaxed"]["f1"] == pytest.approx(4 / 5, abs=1e-4)  # tp2 fp0 fn1


def test_re_end_to_end(report: dict) -> None:
    # 5 gold pairs; the 4 of g1 right, g4's unparseable. ind F1 2/3, ae 1, nr 1.
    e2e = report["re"]["end_to_end"]
    assert e2e["accuracy"] == pytest.approx(0.8)
    assert e2e["per_label_f1"] == {"indication": 0.6667, "adverse_event": 1.0, "not_related": 1.0}
    assert e2e["macro_f1"] == pytest.approx((2 / 3 + 2) / 3, abs=1e-4)
    assert report["re"]["confusion"]["indication"]["unparseable"] == 1


def test_uc_end_to_end_counts_missed_entities_as_wrong(report: dict) -> None:
    # fish oil ok, ginkgo continue (gold discontinue), vitamin D missed, melatonin ok.
    e2e = report["uc"]["end_to_end"]
    assert e2e["accuracy"] == 0.5
    assert e2e["per_label_f1"]["continue"] == 0.5
    assert e2e["per_label_f1"]["uncertain"] is None  # in neither gold nor prediction
    assert e2e["macro_f1"] == pytest.approx(0.5, abs=1e-4)
    found = report["uc"]["found_entities"]
    assert found["n"] == 3
    assert found["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert found["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-4)
    assert report["uc"]["confusion"]["continue"]["missed"] == 1


def test_confidence_intervals_bracket_the_point(report: dict) -> None:
    for block in (report["ner"]["strict"], report["te"]["relaxed"]):
        low, high = block["f1_ci95"]
        assert low <= block["f1"] <= high
    again = score_sentences(
        load_corpus(DATA / "eval_gold.jsonl"), load_predictions(DATA / "eval_pred.jsonl")
    )
    assert again["ner"]["strict"]["f1_ci95"] == report["ner"]["strict"]["f1_ci95"]  # fixed seed


def test_relaxed_matching_is_one_to_one() -> None:
    text = "Fish oil for chest pain and shortness of breath"
    gold = [Entity("T1", "event", 13, 23, "chest pain"), Entity("T2", "event", 28, 47, text[28:])]
    long_pred = [Entity("P1", "event", 13, 47, text[13:])]
    overlap = lambda a, b: a.start < b.end and b.start < a.end  # noqa: E731
    assert max_matching(gold, long_pred, overlap) == 1
    rec_g = Record("x", text, tuple(gold))
    rec_p = Record("x", text, tuple(long_pred))
    from extraction.evaluate import _ner_counts

    assert _ner_counts(rec_g, rec_p, None)[3:] == [1, 0, 1]


def test_gold_against_itself_is_perfect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    gold = str(DATA / "eval_gold.jsonl")
    assert main(["evaluate", "--gold", gold, "--pred", gold, "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["ner"]["strict"]["f1"] == rep["te"]["strict"]["f1"] == 1.0
    for task in ("re", "uc"):
        assert rep[task]["end_to_end"]["accuracy"] == rep[task]["end_to_end"]["macro_f1"] == 1.0
    assert "NER" in capsys.readouterr().out


def test_notes_level(tmp_path: Path) -> None:
    rep = score_notes(DATA / "notes_gold.jsonl", DATA / "notes_pred.jsonl")
    assert rep["missing_predictions"] == 1
    # names: tp fish oil, ginkgo; fp magnesium; fn vitamin d, melatonin (n2 missing).
    assert rep["supplements"]["f1"] == pytest.approx(4 / 7, abs=1e-4)
    # with status only fish oil/continue matches: tp1 fp2 fn3.
    assert rep["supplements_with_status"]["f1"] == pytest.approx(2 / 7, abs=1e-4)
    # "Bruising" overlaps "easy bruising"; fish oil adverse_event is the wrong relation.
    assert rep["facts"]["f1"] == pytest.approx(0.5)
    self_rep = score_notes(DATA / "notes_gold.jsonl", DATA / "notes_gold.jsonl")
    for block in ("supplements", "supplements_with_status", "facts"):
        assert self_rep[block]["f1"] == 1.0


def test_event_overlap_rules() -> None:
    assert events_overlap("easy bruising", "Bruising")
    assert events_overlap("elevated LFTs", "LFTs elevated")
    assert not events_overlap("insomnia", "nausea")
    assert not events_overlap("", "nausea")


def test_bootstrap_of_empty_input() -> None:
    import numpy as np

    assert bootstrap_ci(np.zeros((0, 3)), lambda c: 0.0) == (0.0, 0.0)
