"""Serving: readout speed, the service under load, its reliability and hostile-input suites."""
