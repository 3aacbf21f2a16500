"""Composition of the extraction engine from the configuration (the only place that does it).

``build_extractor`` returns an :class:`extraction.api.Extractor` for the configured backend;
callers (CLI, worker) never construct models, lexicons or retrievers themselves.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from psycopg_pool import ConnectionPool

from adapter.config import ExtractionConfig, Settings
from adapter.errors import ConfigError
from extraction.api import EngineInfo, Extractor
from extraction.corpus import load_corpus
from extraction.errors import ModelLoadError, RetrievalError
from extraction.lexicon import Lexicon
from extraction.pipeline import NotePipeline, SentenceBackend
from extraction.retrieval import ExampleIndex
from extraction.rules import EventGazetteer, RulesBackend
from extraction.tasks import Demo, task_version

if TYPE_CHECKING:
    from extraction.encoder.backend import EncoderBackend
    from extraction.llm_backend import LlmBackend, LlmOptions

BASE_MODEL_DIRNAME = "smollm2-135m-instruct"
# Every [extraction] backend value; hybrids are named "<NER backend>+<RE/UC backend>".
BACKENDS: tuple[str, ...] = get_args(ExtractionConfig.model_fields["backend"].annotation)
HYBRIDS = tuple(name for name in BACKENDS if "+" in name)
# Backends that run the LLM (and so may read demonstrations from the retrieval index).
LLM_BACKENDS = ("llm", "ensemble", *HYBRIDS)


def software_version() -> str:
    try:
        return version("dsfhir")
    except Exception:  # running from a source tree that was never installed
        return "0+unknown"


def load_lexicon(settings: Settings) -> Lexicon:
    path = settings.extraction.lexicon
    if path is None:
        raise ConfigError("[extraction] lexicon must be set")
    return Lexicon.load(settings.resolve(path))


def event_terms(settings: Settings) -> list[str]:
    """Event phrases for the rules backend: from an annotated corpus or a plain list."""
    path = settings.extraction.event_terms
    if path is None:
        return []
    path = settings.resolve(path)
    if path.suffix == ".jsonl":
        return [e.text for r in load_corpus(path) for e in r.events]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def base_model_dir(settings: Settings) -> Path:
    if settings.model.base is not None:
        return settings.resolve(settings.model.base)
    return settings.state_dir / "models" / BASE_MODEL_DIRNAME


def adapter_dir(settings: Settings) -> Path | None:
    return settings.resolve(settings.model.adapter) if settings.model.adapter else None


@dataclass
class IndexRetriever:
    """Retrieval over the pgvector pool, or nothing when disabled."""

    index: ExampleIndex | None

    def nearest(self, task: str, queries: Sequence[str], k: int) -> Sequence[Sequence[Demo]]:
        if self.index is None or k == 0:
            return [[] for _ in queries]
        return self.index.nearest(task, queries, k)


def open_index(settings: Settings, pool: ConnectionPool) -> ExampleIndex:
    from extraction.embedding import SentenceEmbedder

    model = settings.retrieval.embedding_model
    # torch threads are process-wide: the entry point sets them, not the embedder.
    embedder = SentenceEmbedder(settings.resolve(model) if model else None)
    return ExampleIndex(pool, embedder)


def _adapter_name(path: Path | None) -> str:
    """``name@sha`` of the adapter (per-task: ``name[ner@sha,re@sha,...]``) for provenance."""
    from extraction.llm import read_manifest, task_adapter_dirs

    if path is None:
        return "none"
    data = read_manifest(path)
    if data is not None:
        return f"{path.name}@{str(data.get('adapter_sha256', ''))[:12]}"
    per_task = task_adapter_dirs(path)
    if per_task:
        return f"{path.name}[{','.join(_adapter_name(d) for d in per_task.values())}]"
    return path.name


def encoder_base_dir(settings: Settings) -> Path:
    from extraction.encoder.model import default_base_dir

    base = settings.encoder.base
    return settings.resolve(base) if base is not None else default_base_dir()


def encoder_model_dir(settings: Settings) -> Path:
    configured = settings.encoder.model_dir
    return settings.resolve(configured) if configured else settings.state_dir / "encoder"


def encoder_backend(
    settings: Settings,
    lexicon: Lexicon | None,
    model_dir: Path | None = None,
    nearest: bool = True,
) -> EncoderBackend:
    """The trained encoder backend as configured (threads, batch size, directories);
    ``model_dir`` another trained encoder with the same options (the ensemble's seeds)."""
    import torch

    from extraction.encoder.backend import EncoderOptions, load_backend

    torch.set_num_threads(settings.encoder.threads)
    enc = settings.encoder
    options = EncoderOptions(
        batch_size=enc.batch_size,
        known_only=settings.extraction.known_only,
        lexicon_gate=settings.extraction.lexicon_gate,
        lexicon_floor=settings.extraction.lexicon_floor,
    )
    model_dir = model_dir or encoder_model_dir(settings)
    return load_backend(model_dir, encoder_base_dir(settings), lexicon, options, nearest)


def build_extractor(settings: Settings, pool: ConnectionPool | None) -> Extractor:
    """The configured backend wrapped in the note pipeline; model backends run in
    ``[extraction] workers`` processes when that is more than one (see extraction.parallel).
    Prefer :func:`opened_extractor`, which stops the workers."""
    ext = settings.extraction
    backend: SentenceBackend
    # One GPU serves one process best: worker processes are for CPUs.
    workers = 1 if settings.model.device == "cuda" else ext.workers
    if workers > 1 and ext.backend != "lexicon":
        from extraction.parallel import ProcessBackend

        dsn = str(pool.conninfo) if pool is not None and uses_retrieval(settings) else None
        backend = ProcessBackend(
            functools.partial(worker_backend, settings, dsn),
            workers,
            start_timeout=ext.worker_start_timeout_s,
            sentence_timeout=ext.worker_sentence_timeout_s,
            gate=_parent_gate(settings),
        )
    else:
        backend = sentence_backend(settings, pool)
    return NotePipeline(
        backend,
        ext.max_sentence_chars,
        ext.max_note_chars,
        ext.status_rules,
        pipeline_options(settings),
    )


def _parent_gate(settings: Settings) -> Callable[[str], bool] | None:
    """The lexicon gate of backends whose every sentence without a project-lexicon hit gets
    an empty result, to be applied before sentences are sent to worker processes. Not the
    encoder's NER: it gates on the lexicon merged with its training surfaces (names.json)."""
    ext = settings.extraction
    if not ext.lexicon_gate or ext.backend not in ("llm", "llm+encoder", "ensemble"):
        return None
    # The ensemble too: without a hit the LLM and the rules find nothing, and the encoder's
    # lone vote is not a majority.
    return load_lexicon(settings).mentions_any


def uses_event_floor(settings: Settings) -> bool:
    """The event floor is for the LLM's own NER: the backends where the LLM finds entities."""
    ext = settings.extraction
    return ext.event_floor and ext.backend in ("llm", "llm+encoder", "ensemble")


def pipeline_options(settings: Settings) -> str:
    """The extraction switches in force, for provenance ("lexicon-gate+lexicon-floor+...")."""
    ext = settings.extraction
    switches = {
        "lexicon-gate": ext.lexicon_gate,
        "known-only": ext.known_only,
        "lexicon-floor": ext.lexicon_floor,
        "event-floor": uses_event_floor(settings),
        "status-rules": ext.status_rules,
        "label-calibration": ext.label_calibration,
        # te_mode only matters where the LLM gives the relations by itself.
        f"te-{ext.te_mode}": ext.backend in ("llm", "encoder+llm"),
        f"encoder-weight-{ext.ensemble_encoder_weight:g}": ext.backend == "ensemble",
    }
    return "+".join(name for name, on in switches.items() if on) or "none"


@contextmanager
def opened_extractor(settings: Settings, pool: ConnectionPool | None) -> Iterator[Extractor]:
    """:func:`build_extractor`, with its model worker processes (if any) stopped on exit."""
    extractor = build_extractor(settings, pool)
    try:
        yield extractor
    finally:
        close_extractor(extractor)


def close_extractor(extractor: Extractor) -> None:
    """Stop the model worker processes behind ``extractor``, if it has any."""
    close = getattr(getattr(extractor, "backend", None), "close", None)
    if close is not None:
        close()


def worker_backend(settings: Settings, dsn: str | None) -> SentenceBackend:
    """The sentence backend inside one model worker process, with its own database pool
    when retrieval needs one (``dsn``: the parent's database, embedded or not)."""
    from adapter.db import open_pool

    pool = open_pool(dsn, settings.database) if dsn else None
    return sentence_backend(settings, pool)


def sentence_backend(settings: Settings, pool: ConnectionPool | None) -> SentenceBackend:
    """The configured per-sentence backend, in this process."""
    name = settings.extraction.backend
    lexicon = load_lexicon(settings)
    if name == "lexicon":
        return RulesBackend(lexicon, event_terms(settings))
    if name == "encoder":
        return encoder_backend(settings, lexicon)
    if name == "llm":
        return _llm_backend(settings, pool, lexicon)
    if name in HYBRIDS:
        return _hybrid_backend(settings, pool, lexicon)
    if name == "ensemble":
        return _ensemble_backend(settings, pool, lexicon)
    raise ConfigError(f"[extraction] backend {name!r} is not available in this build")


def _llm_backend(
    settings: Settings,
    pool: ConnectionPool | None,
    lexicon: Lexicon,
) -> LlmBackend:
    from extraction.generate import Generator
    from extraction.llm import base_identity, load_model
    from extraction.llm_backend import LlmBackend

    base = base_model_dir(settings)
    adapter = adapter_dir(settings)
    model = settings.model
    loaded = load_model(base, adapter, model.device, model.dtype, model.threads)
    _check_task_adapters(settings, adapter, loaded.task_adapters)
    generator = Generator(loaded, model.batch_size, model.max_new_tokens, model.score_batch_size)
    index = open_index(settings, pool) if uses_retrieval(settings) and pool else None
    if index is not None and index.count() == 0:
        raise RetrievalError(
            f"retrieval.k = {settings.retrieval.k} but the retrieval index is empty "
            "(run `dsfhir index build`, or set retrieval.k = 0)"
        )
    options = llm_options(settings, adapter, k=settings.retrieval.k if index is not None else 0)
    info = EngineInfo(
        backend="llm",
        software_version=software_version(),
        task_version=task_version(dict(options.prompt_versions)),
        base_model=base_identity(base)["name"],
        adapter=_adapter_name(adapter) + calibration_tag(options),
    )
    events = EventGazetteer(event_terms(settings)) if uses_event_floor(settings) else None
    return LlmBackend(generator, IndexRetriever(index), lexicon, info, options, events)


def llm_options(settings: Settings, adapter: Path | None, k: int) -> LlmOptions:
    """The LLM backend's options: configured switches plus what the adapter's manifest pins
    (prompt versions, label calibration)."""
    from extraction.llm import adapter_label_offsets, adapter_prompt_versions
    from extraction.llm_backend import LlmOptions

    ext = settings.extraction
    offsets = adapter_label_offsets(adapter) if ext.label_calibration else {}
    return LlmOptions(
        k=k,
        te_mode=ext.te_mode,
        lexicon_gate=ext.lexicon_gate,
        known_only=ext.known_only,
        lexicon_floor=ext.lexicon_floor,
        prompt_versions=tuple(adapter_prompt_versions(adapter).items()),
        label_offsets=tuple(offsets.items()),
    )


def calibration_tag(options: LlmOptions) -> str:
    """``+cal:<digest>`` when label offsets change the outputs, so provenance tells apart the
    same weights with and without them."""
    if not options.label_offsets:
        return ""
    digest = hashlib.sha256(json.dumps(options.label_offsets).encode()).hexdigest()
    return f"+cal:{digest[:8]}"


def uses_retrieval(settings: Settings) -> bool:
    """Whether the configured engine reads demonstrations from the pgvector index."""
    uses_llm = settings.extraction.backend in LLM_BACKENDS
    return uses_llm and settings.retrieval.enabled and settings.retrieval.k > 0


def _hybrid_backend(
    settings: Settings, pool: ConnectionPool | None, lexicon: Lexicon
) -> SentenceBackend:
    from extraction.hybrid import HybridBackend, hybrid_info

    encoder = encoder_backend(settings, lexicon)
    llm = _llm_backend(settings, pool, lexicon)
    name = settings.extraction.backend
    if name == "encoder+llm":
        return HybridBackend(encoder, llm, hybrid_info(name, encoder.info, llm.info))
    return HybridBackend(llm, encoder, hybrid_info(name, llm.info, encoder.info))


def _ensemble_backend(
    settings: Settings, pool: ConnectionPool | None, lexicon: Lexicon
) -> SentenceBackend:
    from extraction.hybrid import FusedClassifier, MeanScorer, VotingBackend, ensemble_info

    encoder = encoder_backend(settings, lexicon)  # first: the quicker one to fail
    seeds = [  # label-only encoders: no nearest-entry normalisation needed
        encoder_backend(settings, lexicon, settings.resolve(d), nearest=False)
        for d in settings.encoder.label_model_dirs
    ]
    llm = _llm_backend(settings, pool, lexicon)
    rules = RulesBackend(lexicon, event_terms(settings))
    finders = (llm, encoder, rules)
    weight = settings.extraction.ensemble_encoder_weight
    labels = FusedClassifier(llm, MeanScorer([encoder, *seeds]), weight)
    info = ensemble_info([f.info for f in finders], encoder.info, [s.info for s in seeds])
    return VotingBackend(finders, labels, info, min_votes=2)


def _check_task_adapters(settings: Settings, adapter: Path | None, tasks: Sequence[str]) -> None:
    """Per-task adapters must cover every task this engine will ask the LLM for."""
    if not tasks:
        return
    ext = settings.extraction
    labels = {"uc", "te" if ext.te_mode == "task" else "re"}
    needed = {
        "llm": {"ner"} | labels,
        "llm+encoder": {"ner"},  # the encoder labels
        # The ensemble asks the LLM for labels only when they are weighed in.
        "ensemble": {"ner"} | ({"uc", "re"} if ext.ensemble_encoder_weight < 1 else set()),
        "encoder+llm": labels,  # the encoder finds the entities
    }[ext.backend]
    missing = sorted(needed - set(tasks))
    if missing:
        raise ModelLoadError(f"per-task adapters in {adapter} lack {', '.join(missing)}")
