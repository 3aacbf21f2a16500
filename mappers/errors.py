"""The mappers' one exception (its place in the tree is drawn in ``adapter/errors.py``)."""

from __future__ import annotations

from extraction.errors import DsfhirError


class MappingError(DsfhirError):
    """An extraction result or note cannot become valid FHIR; the message names the note."""
