"""Shared machinery reused by every method: feature taps, pluggable loss terms, the trainer base,
extended logging, schedule variants (and the one generator of their source), seeding, labels (hard labels, the
placeholder-label convention), the one sharding rule and synthetic test data."""
