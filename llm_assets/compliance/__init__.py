"""Compliance and cost: lineage reports, residency, erasure impact, TCO."""
