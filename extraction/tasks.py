"""The four RAMIE tasks: instances from gold records, prompt rendering, response schemas.

Each task has a versioned template file in ``extraction/prompts/<task>.v<N>.txt`` (the
instruction), a compact JSON response, and a parser in :mod:`extraction.parsing`. The
retrieval key of an instance is its ``input`` only — never the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

from extraction.corpus import RELATION_TYPES, USAGE_STATUSES, Entity, Record
from extraction.corpus_stats import re_pairs

TASKS = ("ner", "re", "uc", "te")
# The versions new adapters are trained with. An adapter keeps the versions it was trained
# with (its manifest's ``task_version``), so inference renders the prompts it knows.
PROMPT_VERSIONS: Mapping[str, int] = {"ner": 2, "re": 1, "uc": 1, "te": 1}
# The label scorers' probabilities follow these orders, which are the corpus's
# (pipeline.labels_from_scores reads them by RELATION_TYPES / USAGE_STATUSES).
LABELS = {"re": RELATION_TYPES, "uc": USAGE_STATUSES}
# Classification answers are scored after this fixed prefix (one forward pass, no decoding).
ANSWER_PREFIX = {"re": '{"relation":"', "uc": '{"usage":"'}
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
USER, ASSISTANT, END = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"


def compact(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Instance:
    """One training / retrieval item: the model reads ``input`` and answers ``target``."""

    task: str
    example_id: str
    input: str
    target: str


class Demo(Protocol):
    """Anything with an input and its answer (an Instance, a retrieved Example)."""

    @property
    def input(self) -> str: ...

    @property
    def target(self) -> str: ...


@cache
def instruction(task: str, version: int | None = None) -> str:
    """The instruction of a task's template (current version by default; comments dropped)."""
    path = PROMPTS_DIR / f"{task}.v{version or PROMPT_VERSIONS[task]}.txt"
    if not path.is_file():
        raise ValueError(f"no prompt template {path.name} for task {task!r}")
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.startswith("#")).strip()


def task_version(versions: Mapping[str, int] = PROMPT_VERSIONS) -> str:
    """One string naming every prompt version (stamped into outputs and manifests)."""
    return "+".join(f"{t}.v{versions[t]}" for t in TASKS)


def parse_task_version(text: str) -> dict[str, int]:
    """``{"ner": 2, ...}`` from a :func:`task_version` string (e.g. an adapter manifest's)."""
    found = dict(re.findall(r"(\w+)\.v(\d+)", text))
    if set(found) != set(TASKS):
        raise ValueError(f"task version {text!r} does not name every task ({', '.join(TASKS)})")
    return {task: int(found[task]) for task in TASKS}


def mark(text: str, supplement: Entity, event: Entity | None = None) -> str:
    """The sentence with the supplement in << >> and the event in [[ ]]."""
    spans = [(supplement.start, supplement.end, "<<", ">>")]
    if event is not None:
        spans.append((event.start, event.end, "[[", "]]"))
    out = text
    for start, end, left, right in sorted(spans, reverse=True):
        out = out[:start] + left + out[start:end] + right + out[end:]
    return out


def ner_target(rec: Record, version: int | None = None) -> str:
    """v1: every supplement as [s, mention, normalized]; v2 leaves out a normalized name that
    is just the lower-cased mention (70% of them: fewer tokens to generate)."""
    version = version or PROMPT_VERSIONS["ner"]
    items: list[list[str]] = []
    for ent in sorted(rec.entities, key=lambda e: e.start):
        if ent.type == "supplement":
            items.append(_supplement_item(ent.text, ent.normalized, version))
        else:
            items.append(["e", ent.text])
    return compact(items)


def _supplement_item(mention: str, normalized: str | None, version: int) -> list[str]:
    norm = normalized or mention.lower()
    return ["s", mention] if version >= 2 and norm == mention.lower() else ["s", mention, norm]


def ner_target_as(target: str, version: int) -> str:
    """A NER answer in a given prompt version's format (v1 always writes the normalized name,
    v2 only where it differs from the lower-cased mention), e.g. for retrieved demonstrations
    stored in another version. Anything that is not a NER answer is returned unchanged."""
    try:
        items = json.loads(target)
    except ValueError:
        return target
    if not isinstance(items, list):
        return target
    out = []
    for item in items:
        if isinstance(item, list) and len(item) >= 2 and item[0] == "s":
            item = _supplement_item(str(item[1]), str(item[2]) if len(item) > 2 else None, version)
        out.append(item)
    return compact(out)


def te_target(rec: Record) -> str:
    triples = []
    for rel in sorted(rec.relations, key=lambda r: rec.entity(r.head).start):
        if rel.type in ("indication", "adverse_event"):
            triples.append([rec.entity(rel.head).text, rel.type, rec.entity(rel.tail).text])
    return compact(triples)


def instances(rec: Record, versions: Mapping[str, int] | None = None) -> list[Instance]:
    """Every task instance a gold sentence yields (NER/TE per sentence, RE per pair, UC per
    supplement), answers in the given prompt versions' formats (default: the current)."""
    ner_version = (versions or PROMPT_VERSIONS)["ner"]
    out = [Instance("ner", rec.id, rec.text, ner_target(rec, ner_version))]
    if rec.supplements:
        out.append(Instance("te", rec.id, rec.text, te_target(rec)))
    status = {u.entity: u.status for u in rec.usage}
    for supp in rec.supplements:
        target = compact({"usage": status[supp.id]})
        out.append(Instance("uc", f"{rec.id}:{supp.id}", mark(rec.text, supp), target))
    for sid, eid, label in re_pairs(rec):
        marked = mark(rec.text, rec.entity(sid), rec.entity(eid))
        target = compact({"relation": label})
        out.append(Instance("re", f"{rec.id}:{sid}:{eid}", marked, target))
    return out


Hinter = Callable[[str], str]


def render_prompt(
    task: str,
    text: str,
    demos: Sequence[Demo],
    hint: Hinter | None = None,
    version: int | None = None,
) -> str:
    """The prompt up to (and including) the assistant turn's start.

    Demonstrations come first, least similar first, so the most similar sits next to the
    input (RUIE's ordering). ``hint`` adds lexicon candidates to NER inputs.
    """
    parts = [USER, instruction(task, version), "\n"]
    for demo in demos:
        answer = demo.target
        if task == "ner":  # the index holds the current format; the adapter may know another
            answer = ner_target_as(answer, version or PROMPT_VERSIONS["ner"])
        parts += ["\nInput: ", _with_hint(task, demo.input, hint), "\nOutput: ", answer, "\n"]
    parts += ["\nInput: ", _with_hint(task, text, hint), END, "\n", ASSISTANT]
    return "".join(parts)


def _with_hint(task: str, text: str, hint: Hinter | None) -> str:
    if task != "ner" or hint is None:
        return text
    found = hint(text)
    return f"{text}\nCandidates: {found}" if found else text
