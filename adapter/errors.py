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
                                     ModelLoadError, RetrievalError

Messages name the record (note id, corpus line, config key) and never carry note text.
"""

from __future__ import annotations

from extraction.errors import DsfhirError

__all__ = ["ConfigError", "DatabaseError", "DsfhirError", "MigrationError"]


class ConfigError(DsfhirError):
    """The configuration is invalid; the message names the key and the file."""


class DatabaseError(DsfhirError):
    """Postgres is unreachable, lacks pgvector, or a statement failed."""


class MigrationError(DatabaseError):
    """A migration failed and was rolled back; earlier ones stay applied."""
