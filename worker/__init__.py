"""Offline worker: trains models, simulates parameter responses, publishes
influence stores (see ``python -m worker --help``)."""

import influence  # noqa: F401  (first: sets torch's OpenMP wait policy before torch loads)
