"""Shared machinery reused by every method: feature taps, pluggable loss terms, the trainer base,
extended logging, schedule variants and synthetic test data."""
