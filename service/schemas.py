"""Request and response models of the HTTP API.

Scores are ``τ`` of the method page, in units of the chosen model output
(margin, loss or log-probability) per unit upweighting of the example or
source: ``τ > 0`` means it pushed the output up. Credit is in integer units
(``credit_units`` per recorded query, 1,000,000 by default); times are UTC.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Granularity = Literal["sources", "examples", "both"]
OutputKind = Literal["margin", "loss", "logprob"]
Order = Literal["positive", "negative", "abs"]


class _Strict(BaseModel):
    # strict: JSON true is not a number and "3" is not a class index (lax mode would coerce both)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class Query(_Strict):
    """One model input (flattened, ``in_dim`` finite numbers)."""

    input: list[float] = Field(..., min_length=1, max_length=1_000_000, description="model input, flattened")
    target: int | None = Field(None, description="class index to attribute; default: the predicted class")
    client_id: str | None = Field(None, max_length=200, description="echoed back unchanged")


class AttributionRequest(_Strict):
    queries: list[Query] = Field(..., min_length=1, description="one or more queries")
    top_k: int = Field(10, ge=1, description="sources / examples returned per query")
    granularity: Granularity = "sources"
    output: OutputKind = Field("margin", description="model output the scores are taken of")
    order: Order = Field("positive", description="positive: most helpful first; negative: most harmful; abs")
    record: bool = Field(True, description="false: do not count this request in the aggregates")


class Prediction(BaseModel):
    index: int
    label: str
    probability: float


class SourceScore(BaseModel):
    id: str
    score: float


class ExampleScore(BaseModel):
    index: int = Field(..., description="row of the store's training data")
    source: str
    score: float


class Attribution(BaseModel):
    client_id: str | None = None
    prediction: Prediction
    target: Prediction = Field(..., description="the class attributed (probability of that class)")
    sources: list[SourceScore] | None = None
    examples: list[ExampleScore] | None = None
    cached: bool = False


class Timings(BaseModel):
    queue_ms: float = Field(..., description="waiting for a batch, milliseconds")
    readout_ms: float = Field(..., description="the batched readout this request rode on, milliseconds")
    total_ms: float = Field(..., description="whole request inside the service, milliseconds")
    batch_queries: int = Field(..., description="queries in the largest readout batch this request rode on")


class AttributionResponse(BaseModel):
    request_id: str
    store_version: str
    output: OutputKind
    granularity: Granularity
    attributions: list[Attribution]
    recorded: bool = Field(..., description="credit counted in the aggregates (now, or journaled for replay)")
    timings: Timings


class SourceStats(BaseModel):
    id: str
    in_store: bool = Field(..., description="the current store version has this source")
    credit_units: int = Field(..., description="all-time credit, integer units")
    credit: float = Field(..., description="all-time credit in queries (credit_units / units per query)")
    queries: int = Field(..., description="recorded queries that gave this source positive credit")
    share: float = Field(..., description="fraction of all credit")
    trend: list[int] = Field(..., description="credit units per bucket, oldest first, ending at the current one")


class SourcesResponse(BaseModel):
    store_version: str
    units_per_query: int
    total_queries: int
    bucket_s: int
    trend_start: str = Field(..., description="UTC start of the first trend bucket")
    sources: list[SourceStats]


class ReportLine(BaseModel):
    source_id: str
    credit_units: int
    queries: int
    share: str = Field(..., description="credit share of the period, decimal string")
    payout_minor: int = Field(..., description="payout in minor units of the currency (cents)")
    payout: str = Field(..., description="payout as a decimal string")


class CompensationReport(BaseModel):
    start: str
    end: str
    currency: str
    pool: str
    pool_minor: int
    total_credit_units: int
    total_queries: int
    allocated_minor: int = Field(..., description="sum of all payouts: equals pool_minor when any credit exists")
    lines: list[ReportLine]
    store_version: str


class ReloadResponse(BaseModel):
    previous_version: str | None
    store_version: str
    changed: bool
    load_s: float


class StoreInfo(BaseModel):
    version: str
    created_at: str
    root: str
    device: str
    model: dict
    classes: list[str]
    n_examples: int
    n_sources: int
    source_ids: list[str]
    members: int
    dtype: str
    method: dict
    recipe: dict
    data: dict
