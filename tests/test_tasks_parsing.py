"""Prompt rendering per task, response parsing (incl. malformed output), span grounding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extraction.corpus import load_corpus
from extraction.errors import ModelOutputError
from extraction.parsing import find_span, parse_label, parse_list
from extraction.tasks import (
    ANSWER_PREFIX,
    ASSISTANT,
    PROMPT_VERSIONS,
    TASKS,
    Instance,
    instances,
    mark,
    render_prompt,
    task_version,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def gold_instances() -> list[Instance]:
    (rec, *_) = load_corpus(DATA / "eval_gold.jsonl")
    return instances(rec)


def test_instances_cover_every_task(gold_instances: list[Instance]) -> None:
    by_task = {t: [i for i in gold_instances if i.task == t] for t in TASKS}
    # g1: 2 supplements x 2 events -> 4 RE pairs, 2 UC items, one NER and one TE item.
    assert {t: len(v) for t, v in by_task.items()} == {"ner": 1, "re": 4, "uc": 2, "te": 1}
    ner = json.loads(by_task["ner"][0].target)
    assert ner[0] == ["s", "fish oil"]  # ner.v2: normalized only where it differs
    assert ner[1] == ["e", "high triglycerides"]
    te = json.loads(by_task["te"][0].target)
    assert te == [
        ["fish oil", "indication", "high triglycerides"],
        ["ginkgo", "adverse_event", "easy bruising"],
    ]
    labels = sorted(json.loads(i.target)["relation"] for i in by_task["re"])
    assert labels == ["adverse_event", "indication", "not_related", "not_related"]
    assert "<<fish oil>>" in by_task["uc"][0].input


def test_retrieval_key_is_the_input_never_the_answer(gold_instances: list[Instance]) -> None:
    for inst in gold_instances:
        assert "usage" not in inst.input and "relation" not in inst.input
        assert inst.target not in inst.input


@pytest.mark.parametrize("task", TASKS)
def test_prompt_has_instruction_demos_most_similar_last_and_input(task: str) -> None:
    demos = [Instance(task, "a", "far demo", '"A"'), Instance(task, "b", "near demo", '"B"')]
    prompt = render_prompt(task, "the input", demos, hint=lambda t: "fish oil")
    assert prompt.index("far demo") < prompt.index("near demo") < prompt.index("the input")
    assert prompt.endswith(ASSISTANT)
    assert ("Candidates: fish oil" in prompt) == (task == "ner")
    assert f"{task}.v" in task_version()


def test_mark_wraps_supplement_and_event() -> None:
    (rec, *_) = load_corpus(DATA / "eval_gold.jsonl")
    marked = mark(rec.text, rec.entity("T3"), rec.entity("T4"))
    assert "<<ginkgo>>" in marked and "[[easy bruising]]" in marked
    assert (
        marked.replace("<<", "").replace(">>", "").replace("[[", "").replace("]]", "") == rec.text
    )


def test_parse_list_valid_and_schema_checked() -> None:
    parsed = parse_list('[["s","fish oil","fish oil"],["e","rash"],["x"]]', (2, 3))
    assert parsed.valid
    assert parsed.items == [["s", "fish oil", "fish oil"], ["e", "rash"]]
    assert parsed.invalid_items == 1


@pytest.mark.parametrize(
    ("output", "items"),
    [
        ('[["s","fish oil","fish oil"],["e","ra', [["s", "fish oil", "fish oil"]]),  # cut off
        ("I think fish oil.", []),  # prose
        ('{"s": "fish oil"}', []),  # wrong shape
        ("", []),
    ],
)
def test_malformed_output_is_not_valid_but_salvaged(output: str, items: list[list[str]]) -> None:
    parsed = parse_list(output, (2, 3))
    assert not parsed.valid
    assert parsed.items == items


def test_parse_label() -> None:
    assert parse_label("uc", '{"usage":"start"}') == "start"
    with pytest.raises(ModelOutputError):
        parse_label("uc", '{"usage":"ongoing"}')
    with pytest.raises(ModelOutputError):
        parse_label("re", "indication")
    assert ANSWER_PREFIX["re"].startswith('{"relation"')


def test_find_span_grounds_in_order_case_and_spacing() -> None:
    text = "Fish oil daily; stopped fish  oil after rash"
    first = find_span(text, "fish oil", [])
    assert first == (0, 8)  # case-insensitive fallback
    second = find_span(text, "fish oil", [first], after=8)
    assert second is not None and text[second[0] : second[1]] == "fish  oil"
    assert find_span(text, "ginkgo", []) is None
    assert find_span(text, "", []) is None


def test_prompt_versions_render_their_own_template_and_target() -> None:
    from extraction.corpus import Entity, Record
    from extraction.tasks import ner_target, parse_task_version

    assert parse_task_version(task_version()) == dict(PROMPT_VERSIONS)
    v1 = render_prompt("ner", "x", [], version=1)
    v2 = render_prompt("ner", "x", [], version=2)
    assert v1 != v2 and "if it differs" in v2
    with pytest.raises(ValueError, match=r"ner\.v99"):
        render_prompt("ner", "x", [], version=99)
    text = "Takes Fish oil and CoQ10."
    rec = Record(
        "r",
        text,
        (
            Entity("T1", "supplement", 6, 14, "Fish oil", "fish oil"),
            Entity("T2", "supplement", 19, 24, "CoQ10", "coenzyme q10"),
        ),
    )
    assert ner_target(rec, 1) == '[["s","Fish oil","fish oil"],["s","CoQ10","coenzyme q10"]]'
    assert ner_target(rec, 2) == '[["s","Fish oil"],["s","CoQ10","coenzyme q10"]]'


def test_ner_demos_are_rendered_in_the_adapters_version() -> None:
    from extraction.tasks import ner_target_as

    v2 = '[["s","Fish oil"],["s","CoQ10","coenzyme q10"],["e","pain"]]'
    v1 = '[["s","Fish oil","fish oil"],["s","CoQ10","coenzyme q10"],["e","pain"]]'
    assert ner_target_as(v2, 1) == v1 and ner_target_as(v1, 2) == v2
    assert ner_target_as("not json", 1) == "not json"

    class Demo:
        input = "Fish oil, CoQ10; pain."
        target = v2

    assert f"Output: {v1}" in render_prompt("ner", "x", [Demo()], version=1)
    assert f"Output: {v2}" in render_prompt("ner", "x", [Demo()], version=2)
