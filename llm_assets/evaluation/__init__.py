"""Evaluation: model-free item generation, held-out hygiene and scoring, all pure and testable offline."""
