"""Serving: the CPU reference OpenAI-compatible server for offline development and tests (vLLM serves production)."""
