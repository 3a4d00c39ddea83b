"""Fixtures: the session's tiny store (a private copy per test), a real
Redis (``FA_TEST_REDIS_URL``, default DB 15 on 127.0.0.1:6379) with a unique
key prefix per test, and a running service (``util.serve``)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import redis

from influence.store import open_store
from influence.text.attributor import TextAttributor

from ..text_corpus import TINY_TEXT_STORE, build_text_store
from .hf_store import build_hf_store
from .util import REDIS_URL, serve, settings_factory


@pytest.fixture(scope="session")
def built_store(tiny_store) -> Path:
    """The session's tiny store (tests/conftest.py), read only."""
    return Path(tiny_store)


@pytest.fixture(scope="session")
def train_x(built_store):
    return open_store(built_store).X


@pytest.fixture
def store_root(built_store, tmp_path) -> Path:
    """A private copy, so a test may publish into it."""
    dst = tmp_path / "store"
    shutil.copytree(built_store, dst)
    return dst


@pytest.fixture(scope="session")
def redis_client():
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"tests need a Redis at {REDIS_URL} (.ci/run starts one): {e}")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client):
    p = f"test:{uuid.uuid4().hex[:12]}:"
    yield p
    keys = list(redis_client.scan_iter(match=p + "*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def settings_for(store_root, prefix, tmp_path):
    """``settings_for(**overrides)`` -> Settings on the private store and prefix."""
    return settings_factory(store_root, prefix, tmp_path)


@pytest.fixture
def server(settings_for):
    """A running service with default test settings: ``(base_url, settings)``."""
    s = settings_for()
    with serve(s) as base:
        yield base, s


@pytest.fixture(scope="session")
def text_store(tmp_path_factory) -> Path:
    """A tiny text store built by the worker (read only)."""
    return build_text_store(tmp_path_factory.mktemp("text-store"), *TINY_TEXT_STORE)


@pytest.fixture(scope="session")
def text_att(text_store) -> TextAttributor:
    return TextAttributor(open_store(text_store), "cpu")


@pytest.fixture
def text_settings(text_store, prefix, tmp_path):
    return settings_factory(text_store, prefix, tmp_path)


@pytest.fixture(scope="session")
def hf_store(tmp_path_factory) -> Path:
    """A tiny Hugging Face (``hf``) store: LoRA on a random GPT-2 with its own BPE (read only; ``hf_store.py``)."""
    return build_hf_store(tmp_path_factory.mktemp("hf-store"))


@pytest.fixture(scope="session")
def hf_att(hf_store) -> TextAttributor:
    return TextAttributor(open_store(hf_store), "cpu")


@pytest.fixture
def hf_settings(hf_store, prefix, tmp_path):
    return settings_factory(hf_store, prefix, tmp_path)
