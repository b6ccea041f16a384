"""Monitoring wiring."""
