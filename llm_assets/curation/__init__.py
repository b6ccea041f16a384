"""Curation: pure, batch-in/batch-out stages over Arrow tables (no Dagster imports).

Every stage returns a `StageOutput`: the records it kept (possibly changed), a reject table in
`REJECT_SCHEMA` for every record it removed, and figures. So in == kept + rejected holds per stage.
"""
