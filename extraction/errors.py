"""Exceptions raised by the extraction package.

``DsfhirError`` is the root of every error the product raises; it lives here because
``extraction`` is the lowest layer (``mappers`` and ``adapter`` build on it). The full
tree is drawn in ``adapter/errors.py``. This module's part::

    DsfhirError
    └── ExtractionError
        ├── CorpusError          a corpus/prediction record breaks the annotation format
        ├── ModelOutputError     model output that fails the schema or span alignment
        ├── ModelLoadError       a base model / adapter cannot be found or loaded
        ├── RetrievalError       the example index is missing or unusable
        └── WorkerError          a model worker process failed to start, died or hung

Each error names the record or artefact it concerns; none carries note text.
"""

from __future__ import annotations


class DsfhirError(Exception):
    """Root of every error raised by this product."""


class ExtractionError(DsfhirError):
    """Base class of every error raised by ``extraction``."""


class CorpusError(ExtractionError):
    """A record in a corpus file does not follow the annotation format."""

    def __init__(self, source: str, line: int, record_id: str | None, reason: str) -> None:
        self.source = source
        self.line = line
        self.record_id = record_id
        self.reason = reason
        rid = record_id if record_id is not None else "?"
        super().__init__(f"{source}:{line}: record {rid!r}: {reason}")


class ModelOutputError(ExtractionError):
    """Model output could not be parsed or validated against the task schema."""


class ModelLoadError(ExtractionError):
    """A model directory, GGUF file or adapter is missing or incompatible."""


class RetrievalError(ExtractionError):
    """The demonstration index is missing, empty or inconsistent."""


class WorkerError(ExtractionError):
    """A model worker process failed to start, died, hung, or returned something unusable.
    The machine's fault, not the notes': callers retry later rather than blame a note."""
