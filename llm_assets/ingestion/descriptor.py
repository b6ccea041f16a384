"""The `source.yaml` that every landed source carries: who published it, under what licence, where.

Ingestion refuses a source without one, so every record can be traced to a licence and jurisdiction.
"""

from __future__ import annotations

from typing import Any

import pydantic
import yaml

DESCRIPTOR_FILENAME = "source.yaml"

# What to tell the user when a field is wrong; keyed by field name.
_FIELD_HINTS = {
    "name": "use a lowercase slug (a-z, 0-9, '_' or '-', at most 64 characters) equal to the folder name",
    "licence": "add the source's licence, e.g. CC-BY-4.0 or public-domain",
    "jurisdiction": "add the jurisdiction whose law governs the source, e.g. GR, EU, US or INT",
    "source_uri": "add where the data came from (URL, DOI or archive reference)",
    "language": "use an ISO 639-1 or 639-3 code in lowercase, e.g. el or ell, and quote it in YAML",
    "text_field": "name the field that holds the document text",
}


class IngestError(Exception):
    """A configuration or programming error that stops ingestion; the message names the file and the fix."""


class SourceDescriptor(pydantic.BaseModel):
    """Provenance of one source; `name` is also its partition key, so it must be a stable slug."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str = pydantic.Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    title: str = ""
    licence: str = pydantic.Field(min_length=1)
    jurisdiction: str = pydantic.Field(min_length=1)
    source_uri: str = pydantic.Field(min_length=1)
    language: str | None = pydantic.Field(default=None, pattern=r"^[a-z]{2,3}$")
    description: str = ""
    domain: str = pydantic.Field(default="general", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    text_field: str = pydantic.Field(default="text", min_length=1)
    id_field: str | None = None

    @pydantic.field_validator("licence", "jurisdiction", "source_uri", "text_field", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "descriptor"
    kind = error["type"]
    hint = _FIELD_HINTS.get(field, "")
    if kind == "missing":
        text = f"field '{field}' is required"
    elif kind == "extra_forbidden":
        allowed = ", ".join(SourceDescriptor.model_fields)
        text = f"unknown field '{field}'"
        hint = f"remove it or use one of: {allowed}"
    elif kind == "string_pattern_mismatch":
        text = f"field '{field}' is {error['input']!r}"
    elif kind == "string_too_short":
        text = f"field '{field}' is empty"
    elif kind == "string_type":
        text = f"field '{field}' must be text, got {type(error['input']).__name__}"
        hint = hint or "quote the value in YAML"
    else:
        text = f"field '{field}' {error['msg'][0].lower()}{error['msg'][1:]} (got {error['input']!r})"
    return f"{text} — {hint}" if hint else text


def parse_descriptor(data: bytes, where: str) -> SourceDescriptor:
    """Parse a descriptor written as YAML or JSON (JSON is valid YAML); `where` names it in errors."""
    try:
        raw = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise IngestError(f"{where}: not valid UTF-8 at byte {exc.start} — save the file as UTF-8") from exc
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise IngestError(f"{where}: not valid YAML or JSON ({detail}) — fix the syntax") from exc
    if not isinstance(raw, dict):
        raise IngestError(
            f"{where}: expected a mapping of fields (name, licence, jurisdiction, source_uri, ...), "
            f"got {type(raw).__name__} — write one 'field: value' per line"
        )
    try:
        return SourceDescriptor.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise IngestError(f"{where}: {problems}") from exc
