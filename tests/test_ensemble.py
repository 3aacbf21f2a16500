"""The ensemble's parts: span voting, label fusion and the voting backend over real backends.

Voting and fusion are pure; the backends are the real rules backend, the encoder shipped in
``models/`` and the real small LLM with the shipped adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from extraction.api import EngineInfo
from extraction.corpus import Entity, Record, Relation, Usage, load_corpus, parse_record
from extraction.hybrid import (
    FusedClassifier,
    MeanScorer,
    VotingBackend,
    ensemble_info,
    fuse,
    vote,
)
from extraction.lexicon import Lexicon
from extraction.pipeline import LabelScores, SentenceResult, labels_from_scores
from extraction.rules import RulesBackend

REPO = Path(__file__).resolve().parent.parent
LEXICON = REPO / "data" / "lexicon" / "supplements.tsv"


def sup(start: int, end: int, norm: str = "x", eid: str = "") -> Entity:
    return Entity(eid, "supplement", start, end, "?" * (end - start), norm)


def ev(start: int, end: int, eid: str = "") -> Entity:
    return Entity(eid, "event", start, end, "?" * (end - start))


def test_vote_keeps_spans_two_of_three_agree_on_exactly() -> None:
    llm = [sup(0, 8, "fish oil"), ev(13, 20), ev(30, 35)]
    encoder = [sup(0, 8, "fish-oil"), ev(13, 20), ev(29, 35)]  # one boundary differs
    rules = [sup(0, 8, "fish oil"), ev(40, 44)]
    kept = vote([llm, encoder, rules], 2)
    assert [(e.type, e.start, e.end) for e in kept] == [("supplement", 0, 8), ("event", 13, 20)]
    assert [e.id for e in kept] == ["T1", "T2"]  # renumbered in text order
    assert kept[0].normalized == "fish oil"  # the first voter's name


def test_vote_drops_events_without_a_voted_supplement() -> None:
    assert vote([[sup(0, 4), ev(9, 12)], [sup(1, 4), ev(9, 12)], [ev(9, 12)]], 2) == []
    assert vote([[sup(0, 4)], [], []], 1) == [sup(0, 4, eid="T1")]


def test_voting_backend_rejects_impossible_thresholds() -> None:
    rules = RulesBackend(Lexicon.load(LEXICON), [])
    with pytest.raises(ValueError, match="min_votes"):
        VotingBackend([rules, rules], rules_labels(), rules.info, min_votes=3)


def scores(usage: Sequence[float], rel: Sequence[float]) -> dict[int, LabelScores]:
    return {0: LabelScores({"T1": list(usage)}, {("T1", "T2"): list(rel)})}


def test_fuse_is_a_weighted_mean_and_keeps_what_only_one_scored() -> None:
    a = scores([0.6, 0.2, 0.1, 0.1], [0.6, 0.1, 0.3])
    b = scores([0.1, 0.7, 0.1, 0.1], [0.2, 0.1, 0.7])
    assert labels_from_scores(fuse(a, b, 0.0)) == labels_from_scores(a)
    assert labels_from_scores(fuse(a, b, 1.0)) == labels_from_scores(b)
    b[0].usage["T3"] = [0.0, 0.0, 1.0, 0.0]  # e.g. cut off by the other's length limit
    mixed = fuse(a, b, 0.5)[0]
    assert mixed.usage["T1"] == pytest.approx([0.35, 0.45, 0.1, 0.1])
    assert mixed.relations[("T1", "T2")] == pytest.approx([0.4, 0.1, 0.5])
    assert mixed.usage["T3"] == [0.0, 0.0, 1.0, 0.0]


def test_labels_from_scores_leaves_not_related_pairs_out() -> None:
    usage, rels = labels_from_scores(scores([0.1, 0.2, 0.6, 0.1], [0.2, 0.1, 0.7]))
    assert usage == {0: [Usage("T1", "discontinue")]} and rels == {0: []}
    _, rels = labels_from_scores(scores([1, 0, 0, 0], [0.2, 0.7, 0.1]))
    assert rels == {0: [Relation("T1", "T2", "adverse_event")]}


def test_fused_classifier_rejects_weights_outside_zero_one() -> None:
    with pytest.raises(ValueError, match="fusion weight"):
        FusedClassifier(rules_labels(), rules_labels(), 1.5)


class FixedScorer:
    """A label scorer that gives every supplement one status and every pair one relation."""

    def __init__(self, status: int, relation: int) -> None:
        self.status, self.relation = status, relation

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("fixed", "t", "t", "none", "none")

    def label_scores(
        self, sentences: Sequence[str], ents: dict[int, list[Entity]]
    ) -> dict[int, LabelScores]:
        def onehot(n: int, k: int) -> list[float]:
            return [1.0 if i == k else 0.0 for i in range(n)]

        out = {}
        for i, found in ents.items():
            sups = [e for e in found if e.type == "supplement"]
            events = [e for e in found if e.type == "event"]
            out[i] = LabelScores(
                {s.id: onehot(4, self.status) for s in sups},
                {(s.id, e.id): onehot(3, self.relation) for s in sups for e in events},
            )
        return out


def test_mean_scorer_weighs_every_scorer_equally() -> None:
    ents = {0: [sup(0, 4, eid="T1"), ev(9, 12, eid="T2")]}
    mean = MeanScorer([FixedScorer(0, 0), FixedScorer(1, 1), FixedScorer(1, 2)])
    (scores,) = mean.label_scores(["x"], ents).values()
    assert scores.usage["T1"] == pytest.approx([1 / 3, 2 / 3, 0, 0])
    assert scores.relations[("T1", "T2")] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert mean.info.backend == "fixed"
    with pytest.raises(ValueError, match="at least one"):
        MeanScorer([])


def rules_labels() -> FusedClassifier:
    return FusedClassifier(FixedScorer(0, 0), FixedScorer(1, 1), 0.5)


def spans_of(ents: Sequence[Entity]) -> set[tuple[str, int, int]]:
    return {(e.type, e.start, e.end) for e in ents}


def test_voting_backend_labels_only_the_voted_entities() -> None:
    """Two rules backends with different event lists: only the events both know survive."""
    lexicon = Lexicon.load(LEXICON)
    gold = [r for r in load_corpus(REPO / "data/corpus/dev.jsonl") if r.events][:12]
    events = sorted({e.text for r in gold for e in r.events})
    wide, narrow = RulesBackend(lexicon, events), RulesBackend(lexicon, events[::2])
    classifier = FusedClassifier(FixedScorer(2, 1), FixedScorer(0, 0), 0.25)  # first wins
    info = ensemble_info([wide.info, narrow.info], wide.info)
    backend = VotingBackend([wide, narrow], classifier, info, min_votes=2)
    texts = [g.text for g in gold]
    voted = backend.predict(texts)
    assert any(res.record.events for res in voted)
    for res, a, b in zip(voted, wide.predict(texts), narrow.predict(texts), strict=True):
        rec = parse_record(res.record.to_json())  # gold-format valid
        both = spans_of(a.record.entities) & spans_of(b.record.entities)
        expected = both if any(kind == "supplement" for kind, _, _ in both) else set()
        assert spans_of(rec.entities) == expected
        assert all(u.status == "discontinue" for u in rec.usage)
        assert {u.entity for u in rec.usage} == {s.id for s in rec.supplements}
        assert len(rec.relations) == len(rec.supplements) * len(rec.events)
        assert all(r.type == "adverse_event" for r in rec.relations)
    assert info.backend == "ensemble"


def test_voting_backend_adds_up_every_finders_failure_counts() -> None:
    class Failing:
        info = EngineInfo("failing", "t", "t", "none", "none")

        def find_entities(self, sentences: Sequence[str]) -> list[SentenceResult]:
            out = [SentenceResult(Record(f"s{i}", s)) for i, s in enumerate(sentences)]
            for res in out:
                res.unparseable["ner"] += 1
                res.dropped_spans += 2
            return out

    rules = RulesBackend(Lexicon.load(LEXICON), [])
    backend = VotingBackend([Failing(), Failing(), rules], rules_labels(), rules.info, 2)
    (res,) = backend.predict(["Takes vitamin D daily."])
    assert res.unparseable["ner"] == 2 and res.dropped_spans == 4
    assert res.record.entities == ()  # only the rules found the supplement: one vote


SHIPPED_ENCODER = REPO / "models" / "ds-encoder"
SHIPPED_ADAPTER = REPO / "models" / "ramie-smollm2"


def test_real_llm_and_encoder_scores_fuse_into_either_sides_labels(base_dir: Path) -> None:
    """Over gold entities: both real scorers give a distribution per supplement and pair;
    weight 0 / 1 reproduce the LLM's / the encoder's own labels, 1 never runs the LLM."""
    from extraction.encoder.backend import load_backend
    from extraction.encoder.model import default_base_dir
    from extraction.generate import Generator
    from extraction.llm import adapter_prompt_versions, load_model
    from extraction.llm_backend import LlmBackend, LlmOptions, NoRetrieval

    lexicon = Lexicon.load(LEXICON)
    gold = [r for r in load_corpus(REPO / "data/corpus/dev.jsonl") if r.events][:5]
    texts = [g.text for g in gold]
    ents = {i: list(g.entities) for i, g in enumerate(gold)}
    versions = tuple(adapter_prompt_versions(SHIPPED_ADAPTER).items())
    gen = Generator(load_model(base_dir, SHIPPED_ADAPTER), batch_size=4, max_new_tokens=24)
    info = EngineInfo("llm", "t", "t", "smollm2", "shipped")
    llm = LlmBackend(gen, NoRetrieval(), lexicon, info, LlmOptions(prompt_versions=versions))
    encoder = load_backend(SHIPPED_ENCODER, default_base_dir(), lexicon, nearest=False)
    for scorer in (llm, encoder):
        scores = scorer.label_scores(texts, ents)
        for i, g in enumerate(gold):
            assert set(scores[i].usage) == {s.id for s in g.supplements}
            assert set(scores[i].relations) == {
                (s.id, e.id) for s in g.supplements for e in g.events
            }
            for probs in [*scores[i].usage.values(), *scores[i].relations.values()]:
                assert sum(probs) == pytest.approx(1.0, abs=1e-4) and min(probs) >= 0
    results = [SentenceResult(g) for g in gold]
    # The LLM's labels are still its top-scoring label token (Generator.choose's reading).
    from extraction.tasks import ANSWER_PREFIX, LABELS, mark

    keys = [(i, s) for i, g in enumerate(gold) for s in g.supplements]
    marked = [mark(texts[i], s) for i, s in keys]
    prompts = [p + ANSWER_PREFIX["uc"] for p in llm._prompts("uc", marked)]
    gen.loaded.use("uc")
    picks = gen.choose(prompts, llm._option_ids["uc"])
    usage, _ = llm.classify(texts, ents, results)
    assert [u.status for i in sorted(usage) for u in usage[i]] == [LABELS["uc"][k] for k in picks]
    assert FusedClassifier(llm, encoder, 0.0).classify(texts, ents, results) == llm.classify(
        texts, ents, results
    )
    before = gen.seconds["score"]
    fused = FusedClassifier(llm, encoder, 1.0).classify(texts, ents, results)
    assert fused == encoder.classify(texts, ents, results)
    assert gen.seconds["score"] == before  # the LLM was not asked
