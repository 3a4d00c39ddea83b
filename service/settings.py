"""The service's one settings object.

Every field is read, in increasing priority, from its default, a ``.env``
file in the working directory, an environment variable ``FA_<FIELD>``
(upper case) and, for a few, a flag of ``python -m service``. The Redis URL
is also read from plain ``REDIS_URL``. Lists of keys are JSON
(``["k1","k2"]``) or comma separated (``k1,k2``); publisher keys map a key
to a source id: ``{"key": "source"}`` or ``key1:source1,key2:source2``.
``service/SETTINGS.md`` documents each field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KeyList = Annotated[list[str], NoDecode]
KeyMap = Annotated[dict[str, str], NoDecode]


class Settings(BaseSettings):
    """All settings of the service (units in the field names or docs)."""

    model_config = SettingsConfigDict(env_prefix="FA_", env_file=".env", extra="ignore", populate_by_name=True)

    # where and what to serve
    host: str = Field("127.0.0.1", description="interface uvicorn binds")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn binds (0 = any free port)")
    store: Path = Field(Path("stores/digits"), description="influence store root (holds CURRENT and versions/)")
    data_dir: Path = Field(Path("var"), description="service data: embedded Redis files and the credit journal")
    device: str | None = Field(None, description="torch device for the store; unset = CUDA when present, else CPU")
    torch_threads: int = Field(0, ge=0, description="CPU threads of torch's readout (0 = torch's default)")
    watch_store_s: float = Field(0.0, ge=0, description="poll CURRENT every this many seconds and reload (0 = off)")
    workers: int = Field(1, ge=1, le=64, description="serving processes behind the one port (uvicorn's "
                         "multiprocess supervisor): each with its own batcher and its own copy of the store")

    # request limits (checked before any work)
    max_queries: int = Field(64, ge=1, description="queries per request")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="request body size, bytes")
    max_top_k: int = Field(100, ge=1, description="largest top_k a request may ask for")
    max_text_chars: int = Field(4000, ge=1, description="characters per text query (text, or prompt + completion)")
    max_token_top_k: int = Field(10, ge=1, description="largest token_top_k (sources per token of a per_token "
                                 "answer) a request may ask for")
    max_per_token_targets: int = Field(256, ge=1, description="scored tokens per query of a per_token request "
                                       "(each carries token_top_k sources in the answer)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this many seconds "
                                  "of the headers (408 beyond)")
    header_timeout_s: float = Field(10.0, gt=0, description="a connection must send a whole request head (request "
                                    "line and headers) within this many seconds of opening, or of its last "
                                    "response; else it is closed (no answer: nothing was asked)")
    max_connections: int = Field(1000, ge=1, description="open connections (and requests in progress) per serving "
                                 "process; beyond, a request is answered 503 and its connection closed")
    max_header_bytes: int = Field(16_384, ge=1024, description="request header names and values together, bytes "
                                  "(431 beyond)")
    max_headers: int = Field(100, ge=10, description="request headers (431 beyond)")
    max_request_cost: int = Field(250_000, ge=1, description="readout cost of one request (attributions, or a "
                                  "what-if's queries together), token-rows: each query's positions (its length "
                                  "bucket; a vector query 1) times the store rows it is read against")
    max_whatif_sample: int = Field(512, ge=1, description="held-out queries a what-if may ask for (sample)")

    # micro-batcher
    batching: bool = Field(True, description="merge concurrent requests into one readout (off: one per request)")
    max_batch: int = Field(64, ge=1, description="queries per readout batch")
    max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits for more requests, milliseconds")
    adaptive_wait: bool = Field(True, description="wait only while the arrival rate says another request is due "
                                "within the window (off: always wait max_wait_ms)")
    readout_block: int = Field(16, ge=1, description="rows per readout call; batches are padded to whole blocks")
    text_readout_block: int = Field(4, ge=1, description="text stores: rows per readout call (each row a full-context "
                                    "forward carrying every tangent of the store, so a lone query pays the whole "
                                    "block; per-row cost is flat from 2-4 rows up on a CPU)")
    text_tangent_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="text stores: precision of the readout's forward tangents (the model's answer, its "
        "token log-probabilities and all sums stay float32); bfloat16 about halves the readout time on CPUs with "
        "AVX512-BF16 (and GPUs) for scores within about 1% of the largest (BENCHMARKS.md)")
    packed_rows: bool = Field(True, description="a store whose per-document rows are quantised keeps them as their "
                              "codes in memory and dequantises one block of rows at a time inside the readout "
                              "(resident: the stored bytes plus one block); false: float32 rows, n x p x 4 bytes")
    readout_workers: int = Field(1, ge=1, le=64, description="batches read out at the same time, each on its own "
                                 "thread (with torch_threads=1: one core each; answers do not depend on it)")
    queue_size: int = Field(1024, ge=1, description="queries waiting for the readout; beyond it 503 + Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request limit on queueing plus readout, seconds")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 answers, seconds")

    # Redis: aggregates, cache, idempotency
    redis_url: str | None = Field(None, validation_alias=AliasChoices("redis_url", "FA_REDIS_URL", "REDIS_URL"),
                                  description="Redis to use; unset = start the embedded server in data_dir")
    redis_prefix: str = Field("fa:", description="prefix of every Redis key the service writes")
    redis_timeout_s: float = Field(2.0, gt=0, description="connect and command timeout, seconds")
    redis_max_connections: int = Field(64, ge=1, description="connections to Redis; more requests wait for one")
    cache_ttl_s: int = Field(3600, ge=0, description="result cache lifetime, seconds (0 = no cache)")
    idempotency_ttl_s: int = Field(7 * 86400, ge=60, description="how long an Idempotency-Key is remembered, seconds")
    idempotency_local_entries: int = Field(10_000, ge=1, description="idempotent answers each process keeps "
                                           "in memory (read first; a retry during a Redis outage gets them)")
    record_marker_ttl_s: int = Field(86400, ge=60, description="how long a record's applied-marker lives, seconds")

    # credit and aggregates
    credit_units: int = Field(1_000_000, ge=1, description="integer credit units each recorded query distributes")
    credit_rule: Literal["proportional", "top"] = Field(
        "proportional", description="proportional: over sources with positive score; top: all to the best one")
    bucket_s: int = Field(3600, ge=60, description="width of the aggregate time buckets, seconds (UTC aligned)")
    trend_buckets: int = Field(24, ge=1, le=1000, description="buckets in the trend of /v1/sources")
    journal_max_entries: int = Field(100_000, ge=1, description="records the outage journal holds before 503")
    journal_fsync: bool = Field(True, description="fsync each journal append (durable across power loss)")
    replay_interval_s: float = Field(1.0, gt=0, description="how often a non-empty journal is retried, seconds")

    # access
    query_keys: KeyList = Field([], description="keys allowed to POST /v1/attributions")
    admin_keys: KeyList = Field([], description="keys allowed everything, including reload")
    report_keys: KeyList = Field([], description="keys allowed to read all sources and reports")
    publisher_keys: KeyMap = Field({}, description="key -> source id; sees only that source's lines")
    metrics_public: bool = Field(True, description="serve /metrics without a key")
    docs_public: bool = Field(True, description="serve /openapi.json, /docs and /redoc without a key (else any key)")

    @field_validator("query_keys", "admin_keys", "report_keys", mode="before")
    @classmethod
    def _key_list(cls, v):
        if isinstance(v, str):
            v = v.strip()
            return json.loads(v) if v.startswith("[") else [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("publisher_keys", mode="before")
    @classmethod
    def _key_map(cls, v):
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("{"):
                return json.loads(v)
            pairs = [p.split(":", 1) for p in v.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected key:source_id pairs separated by commas")
            return {k.strip(): s.strip() for k, s in pairs}
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.queue_size < self.max_queries:
            raise ValueError(f"queue_size ({self.queue_size}) must be >= max_queries ({self.max_queries})")
        return self

    @property
    def auth_enabled(self) -> bool:
        """False only when no key of any kind is configured (open access)."""
        return bool(self.query_keys or self.admin_keys or self.report_keys or self.publisher_keys)

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"
