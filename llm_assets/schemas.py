"""Arrow schemas shared by every stage, so a record and a reject look the same everywhere."""

from __future__ import annotations

import pyarrow as pa

# A document as it flows through the graph. `metadata` is a JSON object (as text) for source-specific fields.
RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_uri", pa.string()),
        pa.field("file", pa.string()),
        pa.field("locator", pa.string()),
        pa.field("licence", pa.string()),
        pa.field("jurisdiction", pa.string()),
        pa.field("language_hint", pa.string()),
        pa.field("metadata", pa.string()),
    ]
)

# A record some stage refused, with enough to find it again and to know why.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("file", pa.string()),
        pa.field("locator", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("excerpt", pa.string()),
    ]
)

# Columns each curation stage adds to the records it keeps.
QUALITY_SCHEMA = RECORD_SCHEMA.append(pa.field("lang", pa.string())).append(pa.field("lang_score", pa.float64()))
PERPLEXITY_SCHEMA = QUALITY_SCHEMA.append(pa.field("perplexity", pa.float64()))
CURATED_SCHEMA = PERPLEXITY_SCHEMA.append(pa.field("domain", pa.string())).append(pa.field("split", pa.string()))
