"""Forward Attribution core: model specs, the influence store format and the
forward-only readout math. No HTTP, no Redis, no settings in here: both the
worker and the service import this package."""

__version__ = "0.1.0"
