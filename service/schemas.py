"""Request and response models of the HTTP API.

Scores are ``τ`` of the method page, in units of the chosen model output
(margin, loss or log-probability) per unit upweighting of the example or
source: ``τ > 0`` means it pushed the output up. Credit is in integer units
(``credit_units`` per recorded query, 1,000,000 by default); times are UTC.

A query is one of three forms, told apart by its keys: ``{"input": [...]}``
(a vector store: ``model.kind == "mlp"``), ``{"text": "..."}`` or
``{"prompt": "...", "completion": "..."}`` (a text store: ``"gpt"`` or ``"hf"``). Which
forms the served store takes is decided by ``service.forms``; a form the
store does not take is a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

Granularity = Literal["sources", "examples", "both"]
OutputKind = Literal["margin", "loss", "logprob"]
Order = Literal["positive", "negative", "abs"]


class _Strict(BaseModel):
    # strict: JSON true is not a number and "3" is not a class index (lax mode would coerce both)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class Query(_Strict):
    """One model input of a vector store (flattened, ``in_dim`` finite numbers)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"input": [0.0] * 64, "target": 3}]})

    input: list[float] = Field(..., min_length=1, max_length=1_000_000, description="model input, flattened")
    target: int | None = Field(None, description="class index to attribute; default: the predicted class")
    client_id: str | None = Field(None, max_length=200, description="echoed back unchanged")


_TEXT_CAP = 1_000_000  # a parse-time cap; the served limit is the setting max_text_chars


class TextQuery(_Strict):
    """A text store's query: f = mean log-probability of the text's tokens,
    each given the ones before it (at least 2, at most the model's context
    + 1: 65 tokens for the brown preset, 129 for brown-ft)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "The jury said the election was fair."}]})

    text: str = Field(..., min_length=1, max_length=_TEXT_CAP, description="raw text (or corpus tokens, see "
                      "pretokenized)")
    pretokenized: bool = Field(False, description="whitespace-separated corpus tokens, encoded as they are")
    client_id: str | None = Field(None, max_length=200, description="echoed back unchanged")


class PromptQuery(_Strict):
    """A text store's query: f = mean log-probability of the completion's
    tokens given the prompt (prompt + completion at most the model's context + 1 tokens)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt": "The jury said", "completion":
                                                               "the election was fair."}]})

    prompt: str = Field(..., min_length=1, max_length=_TEXT_CAP, description="context, not scored")
    completion: str = Field(..., min_length=1, max_length=_TEXT_CAP, description="the tokens f is taken over")
    pretokenized: bool = Field(False, description="whitespace-separated corpus tokens, encoded as they are")
    client_id: str | None = Field(None, max_length=200, description="echoed back unchanged")


def _query_form(v: Any) -> str:
    """The union member by the keys present (``input`` wins; none: the vector
    form, whose errors then name the missing ``input``). The tags hold ``[``
    so that error paths leave them out (``service.errors``)."""
    if isinstance(v, dict):
        keys = v.keys()
    elif isinstance(v, BaseModel):
        keys = type(v).model_fields.keys()
    else:
        return "query[vector]"
    if "input" in keys:
        return "query[vector]"
    if "text" in keys:
        return "query[text]"
    if "prompt" in keys or "completion" in keys:
        return "query[prompt]"
    return "query[vector]"


AnyQuery = Annotated[
    Annotated[Query, Tag("query[vector]")] | Annotated[TextQuery, Tag("query[text]")]
    | Annotated[PromptQuery, Tag("query[prompt]")],
    Discriminator(_query_form),
]


class AttributionRequest(_Strict):
    queries: list[AnyQuery] = Field(..., min_length=1, description="one or more queries, all of the form the "
                                    "served store takes: input (vector store) or text / prompt + completion "
                                    "(text store)")
    top_k: int = Field(10, ge=1, description="sources / examples returned per query")
    granularity: Granularity = "sources"
    output: OutputKind | None = Field(None, description="model output the scores are taken of; default margin "
                                      "(vector store), logprob (text store: the only one)")
    order: Order = Field("positive", description="positive: most helpful first; negative: most harmful; abs")
    record: bool = Field(True, description="false: do not count this request in the aggregates")
    per_token: bool = Field(False, description="text stores: also each scored token's piece, characters, "
                            "log-probability and top sources, and spans of tokens with the same top source "
                            "(the sequence's scores and credit are unchanged)")
    token_top_k: int = Field(3, ge=1, description="with per_token: sources per token (at most max_token_top_k)")


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


class SourceName(BaseModel):
    id: str
    name: str = Field(..., description="display name (the store's source_names)")
    score: float


class DocumentScore(BaseModel):
    index: int = Field(..., description="row of the store's training documents")
    id: str = Field(..., description="document id")
    source: str
    genre: str | None = Field(None, description="the document's genre, when the corpus has genres (Brown)")
    snippet: str = Field(..., description="the document's first words")
    score: float


class TokenScore(BaseModel):
    """One scored token of a per_token answer. Its scores are τ_t, the
    token's own log-probability's response (f's are their mean)."""

    piece: str = Field(..., description="the token's characters of the text (of the completion for prompt + "
                       "completion): text[start_char:end_char]; the pieces join back into the scored text")
    start_char: int = Field(..., description="first character (Python str index: code points) of the piece")
    end_char: int = Field(..., description="one past its last character")
    logprob: float = Field(..., description="log p of the token given its prefix (its token_logprobs entry)")
    sources: list[SourceName] = Field(..., description="the token's top token_top_k sources, by the request's "
                                      "order")


class TokenSpan(BaseModel):
    start_char: int
    end_char: int
    source: str = Field(..., description="the top source (id) of every token of the span")
    name: str = Field(..., description="its display name")
    score: float = Field(..., description="mean of the span's tokens' scores for that source")
    n_tokens: int


class TextAttribution(BaseModel):
    """A text query's answer: f, its tokens' log-probabilities, publishers and documents."""

    client_id: str | None = None
    logprob: float = Field(..., description="f: mean log-probability (natural log) of the scored tokens")
    token_logprobs: list[float] = Field(..., description="log p of each scored token given its prefix, in order")
    tokens: list[str] | None = Field(None, description="every token of the query as the model reads it, as "
                                     "readable text (`<unk>` out of vocabulary; an hf store's pieces of the text "
                                     "itself, joining back into it: `\" jury\"`), n_tokens of them; token_logprobs are "
                                     "those of the last n_targets")
    n_tokens: int = Field(..., description="tokens of the query (prompt + completion)")
    n_targets: int = Field(..., description="tokens f is taken over")
    oov: int = Field(..., description="tokens out of the vocabulary (scored as <unk>; always 0 for a byte-level "
                     "BPE, which encodes every text)")
    sources: list[SourceName] | None = None
    examples: list[DocumentScore] | None = None
    per_token: list[TokenScore] | None = Field(None, description="with per_token: each scored token in order "
                                                "(the completion's, for prompt + completion); absent otherwise")
    spans: list[TokenSpan] | None = Field(None, description="with per_token: consecutive scored tokens with the "
                                          "same top source, merged; they tile the scored tokens' characters")
    cached: bool = False


class Timings(BaseModel):
    queue_ms: float = Field(..., description="waiting for a batch, milliseconds")
    readout_ms: float = Field(..., description="the batched readout this request rode on, milliseconds")
    total_ms: float = Field(..., description="whole request inside the service, milliseconds")
    batch_queries: int = Field(..., description="its own queries plus the other requests' queries read out "
                               "in the same readout rounds (a large request rides a round per block)")


class AttributionResponse(BaseModel):
    request_id: str
    store_version: str
    output: OutputKind
    granularity: Granularity
    attributions: list[Attribution | TextAttribution]
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


class ProcessCount(BaseModel):
    serving: int = Field(..., description="serving processes of this host that serve store_version now")
    total: int = Field(..., description="live serving processes of this host")


class ReloadResponse(BaseModel):
    previous_version: str | None
    store_version: str
    changed: bool
    load_s: float
    processes: ProcessCount | None = Field(None, description="with several serving processes (workers > 1): how "
                                           "many serve store_version when this answer was sent; null with one")


class StoreInfo(BaseModel):
    version: str
    created_at: str
    root: str | None = Field(None, description="the store root's path on the server: admin keys only (null to "
                             "others)")
    device: str
    readout_dtype: str = Field("float32", description="precision of the readout's forward tangents (text stores: "
                               "FA_TEXT_TANGENT_DTYPE; the answer f and all sums are float32)")
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
    audit: dict | None = Field(None, description="the version's audit against retraining (fa-worker audit: "
                               "settings, metrics such as source_lds and loso_pearson, created_at); null when "
                               "this version has not been audited")
    cost: dict = Field(..., description="what a query costs here, in the unit max_request_cost counts: rows_read "
                       "per query (forward tangents) for granularity sources and documents, and per_query: the "
                       "cost of one query at each length bucket (tokens x rows); resident_rows_bytes: the stored rows "
                       "held in memory, packed_rows: whether they are held as their codes (settings packed_rows)")


class SourceLabel(BaseModel):
    id: str
    name: str = Field(..., description="display name (the store's source_names; the id when it has none)")


class SourceNames(BaseModel):
    """The served store's sources and their display names (dashboard labels)."""

    store_version: str
    sources: list[SourceLabel]


class Passage(BaseModel):
    id: str = Field(..., description="heldout-<document id> or train-<document id>")
    document: str = Field(..., description="the document the passage is cut from")
    text: str = Field(..., description="the passage: corpus tokens joined by spaces (they encode as the corpus does)")
    n_tokens: int = Field(..., description="tokens under the store's tokenizer (at most the context + 1)")
    oov: int = Field(..., description="of them out of the vocabulary")
    source: str = Field(..., description="the document's source id (publisher or genre, as the store's sources)")
    source_name: str
    genre: str | None = None


class PassagesResponse(BaseModel):
    """Passages to try on a text store. ``kind``: ``heldout`` (documents the
    model never trained on) or ``training`` (no held-out text is available
    for this store: the first words of training documents, which the model
    was trained on)."""

    store_version: str
    kind: Literal["heldout", "training"]
    note: str
    max_tokens: int = Field(..., description="tokens a query may have: the model's context + 1")
    passages: list[Passage]


class WhatIfRequest(_Strict):
    """A what-if: the first-order change of each query's output if sources
    were removed or re-weighted in training (no retraining; see
    ``influence.whatif``). Queries inline (the forms of ``POST
    /v1/attributions``) or ``sample``: that many of the store's held-out
    queries; ``remove`` and ``weights`` name source ids."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"sample": 50, "remove": ["new-york-times"]},
        {"queries": [{"text": "The jury said the election was conducted fairly."}],
         "weights": {"new-york-times": 0.5, "time": 2.0}}]})

    queries: list[AnyQuery] | None = Field(None, min_length=1, description="queries of the served store's form; "
                                           "omit to use sample")
    sample: int | None = Field(None, ge=1, description="instead of queries: the first N of the store's held-out "
                               "query sample (digits test split, held-out Brown passages)")
    remove: list[str] = Field([], description="source ids removed from training (weight 0)")
    weights: dict[str, float] = Field({}, description="source id -> weight in training (1 = as trained, 0 = "
                                      "removed, 2 = counted twice); from 0 to 1000")
    output: OutputKind | None = Field(None, description="model output; default margin (vector store), logprob "
                                      "(text store: the only one)")


class WhatIfQuery(BaseModel):
    client_id: str | None = Field(None, description="the inline query's client_id, or the sample item's id")
    change: float = Field(..., description="predicted change of the output: after minus before, output units")


class WhatIfAccuracy(BaseModel):
    """How well this store's first-order what-if predicted real retraining,
    measured by its audit (``fa-worker audit``) for a scenario like this one."""

    scenario: Literal["one_source_removed", "half_the_sources_removed"]
    pearson: float | None = Field(None, description="predicted vs real change over the audit's (scenario, query) "
                                  "pairs")
    mae: float | None = Field(None, description="mean absolute error of the predicted change, output units")
    actual_mean_abs: float | None = Field(None, description="mean |real change|: the scale mae compares with")
    scale_fit: float | None = Field(None, description="real / predicted change, least squares: how much the "
                                    "first order under- (>1) or over-states (<1) the change")
    output: str = Field(..., description="the output the audit measured (margin of the true class)")
    audited_version: str | None = None
    created_at: str | None = None


class WhatIfResponse(BaseModel):
    store_version: str
    output: OutputKind
    formula: str = Field(..., description="how change is computed from the scores")
    n: int = Field(..., description="the n of the formula: training examples (vector store) or training target "
                   "tokens (text store) behind the mean training loss")
    n_unit: str
    weights: dict[str, float] = Field(..., description="every source whose weight changes (removed: 0)")
    queries: list[WhatIfQuery]
    mean_change: float = Field(..., description="mean of change over the queries")
    accuracy: WhatIfAccuracy | None = Field(None, description="from the store's audit; null when it has none "
                                            "(see accuracy_note)")
    accuracy_note: str
