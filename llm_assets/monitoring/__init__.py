"""Production monitoring: sampled traffic, its retention, and (later) drift and feedback."""
