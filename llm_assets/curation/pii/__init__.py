"""PII scrubbing: fast validated detectors for structured identifiers, dictionary name/location detection,
versioned YAML policies, and a batch stage that redacts or drops documents and logs hashed hits.

Pure logic (no Dagster imports). Entry points: `load_policy`, `scan_text`, `scan_texts`, `redact_text`, `scrub_batch`,
`rescan_clean`.
"""

from llm_assets.curation.pii.policy import PII_KINDS, PLACEHOLDERS, PiiPolicy, PolicyError, load_policy
from llm_assets.curation.pii.scrub import (
    PII_EVENT_SCHEMA,
    PiiHit,
    redact_text,
    rescan_clean,
    scan_text,
    scan_texts,
    scrub_batch,
)

__all__ = [
    "PII_EVENT_SCHEMA",
    "PII_KINDS",
    "PLACEHOLDERS",
    "PiiHit",
    "PiiPolicy",
    "PolicyError",
    "load_policy",
    "redact_text",
    "rescan_clean",
    "scan_text",
    "scan_texts",
    "scrub_batch",
]
