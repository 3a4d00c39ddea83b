"""Deployment tests reuse the service tests' Redis fixtures (a real Redis,
DB 15 by default, a unique key prefix per test)."""

from tests.service.conftest import prefix, redis_client  # noqa: F401  (fixtures)
