"""The product's exception hierarchy (the whole tree; each class says when it is raised).

::

    DsfhirError                      root (extraction.errors)
    ├── ConfigError                  bad config file / key / type / env var; fails at start
    ├── DatabaseError                Postgres unreachable, missing pgvector, migration failed
    │   └── MigrationError           one migration file failed (rolled back)
    ├── FhirError                    talking to the FHIR server failed
    │   ├── FhirTemporaryError       retryable (429/503/5xx/transport) after retries ran out
    │   ├── FhirFatalError           not retryable (4xx, OperationOutcome errors)
    │   └── AuthError                token endpoint or credentials failed
    ├── NoteTextError                a note has no usable text (reason recorded, never dropped)
    ├── MappingError                 extraction result cannot become valid FHIR (mappers)
    └── ExtractionError              extraction.errors: CorpusError, ModelOutputError,
                                     ModelLoadError, RetrievalError, WorkerError (a model
                                     worker process died or hung: the sync cycle leaves the
                                     page for the next cycle)

Messages name the record (note id, corpus line, config key) and never carry note text.
"""

from __future__ import annotations

from extraction.errors import DsfhirError

__all__ = [
    "AuthError",
    "ConfigError",
    "DatabaseError",
    "DsfhirError",
    "FhirError",
    "FhirFatalError",
    "FhirTemporaryError",
    "MigrationError",
    "NoteTextError",
]


class ConfigError(DsfhirError):
    """The configuration is invalid; the message names the key and the file."""


class DatabaseError(DsfhirError):
    """Postgres is unreachable, lacks pgvector, or a statement failed."""


class MigrationError(DatabaseError):
    """A migration failed and was rolled back; earlier ones stay applied."""


class FhirError(DsfhirError):
    """A FHIR interaction failed; ``status`` is the HTTP status (None: no response at all).

    ``outcome`` carries the server's OperationOutcome text (issue details/diagnostics) when
    it sent one, so the operator sees why the server refused.
    """

    def __init__(self, message: str, status: int | None = None, outcome: str = "") -> None:
        self.status = status
        self.outcome = outcome
        super().__init__(f"{message}: {outcome}" if outcome else message)


class FhirTemporaryError(FhirError):
    """Still failing after the retries (429/503/408/5xx or a transport error): try again later."""


class FhirFatalError(FhirError):
    """Retrying cannot help: a 4xx answer, an OperationOutcome error or an unusable payload."""


class AuthError(FhirError):
    """The token endpoint refused us, or the credentials / key could not be used."""


class NoteTextError(DsfhirError):
    """A note has no usable text; ``reason`` is a short cause code, recorded per note."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
