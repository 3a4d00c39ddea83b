"""Offline worker: trains models, simulates parameter responses, publishes
influence stores (see ``python -m worker --help``)."""
