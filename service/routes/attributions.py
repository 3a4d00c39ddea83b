"""``POST /v1/attributions`` (the flow itself: ``service.attribute``) and
its OpenAPI examples, one per query form."""

from __future__ import annotations

import hashlib
import time
from typing import Annotated

from fastapi import APIRouter, Body, Request

from ..attribute import attribute
from ..bodies import PREPARE_OFF_LOOP, attribution_shape, checked_route
from ..deps import QueryKey, RuntimeDep, ServedDep
from ..errors import ApiError
from ..schemas import AttributionRequest, AttributionResponse
from .base import JSONResponse

router = APIRouter(route_class=checked_route(attribution_shape))

ATTRIBUTION_EXAMPLES = {
    "vector": {"summary": "vector store (kind mlp): numbers",
               "description": "A flattened input of the store's in_dim finite numbers (64 for digits); "
                              "target: the class to attribute (default: the predicted one).",
               "value": {"queries": [{"input": [0.0] * 64, "target": 3, "client_id": "q1"}], "top_k": 5,
                         "granularity": "both", "output": "margin"}},
    "text": {"summary": "text store (kind gpt or hf): a text",
             "description": "f = mean log-probability of the text's tokens, each given the ones before it, "
                            "tokenized by the store's own tokenizer (word-level for gpt, the Hugging Face model's "
                            "BPE for hf); 2 tokens to the model's context + 1 (65 for the brown preset, 129 for "
                            "brown-ft), at most max_text_chars characters.",
             "value": {"queries": [{"text": "The jury said the election was conducted fairly."}], "top_k": 5,
                       "granularity": "both"}},
    "prompt": {"summary": "text store (kind gpt or hf): prompt and completion",
               "description": "f = mean log-probability of the completion's tokens given the prompt; "
                              "pretokenized: whitespace-separated corpus tokens (joined with single spaces "
                              "for an hf store's tokenizer).",
               "value": {"queries": [{"prompt": "the jury said", "completion": "the election was fair .",
                                      "pretokenized": True}], "granularity": "sources"}},
    "per_token": {"summary": "text store: which sources shaped each token",
                  "description": "per_token: each scored token's piece of the text (they join back into it), "
                                 "characters, log-probability and top token_top_k sources, and spans of tokens "
                                 "with the same top source; the sequence's scores and credit are unchanged.",
                  "value": {"queries": [{"prompt": "The jury said", "completion": " the election was fair."}],
                            "per_token": True, "token_top_k": 3, "record": False}},
}


@router.post("/v1/attributions", response_model=AttributionResponse)
async def attributions(req: Annotated[AttributionRequest, Body(openapi_examples=ATTRIBUTION_EXAMPLES)],
                       request: Request, p: QueryKey, rt: RuntimeDep, served: ServedDep):
    """Attribute one or many queries; see ``service/attribute.py``.

    The served store decides the query form: a vector store (``model.kind``
    ``mlp``) takes ``{"input": [...], "target": c}``, a text store
    (``gpt``, or ``hf``: a Hugging Face causal LM) ``{"text": "..."}`` or
    ``{"prompt": "...", "completion": "..."}`` (optional ``"pretokenized":
    true``), encoded by the store's own tokenizer, at most the model's
    context + 1 tokens (65 for ``brown``) and ``max_text_chars`` characters per query; the
    other form is a 422 naming the field. Text answers carry ``logprob``
    (f), ``token_logprobs``, ``oov``, publishers (id, name) and documents
    (id, genre, snippet); with ``"per_token": true`` also each scored
    token's top sources and ``spans`` (``service.per_token``)."""
    status, t0 = 500, time.perf_counter()
    try:
        raw = await request.body()
        fingerprint = hashlib.sha256(raw).hexdigest()
        body, replayed = await attribute(rt, served, req, p.id, request.headers.get("idempotency-key"), fingerprint,
                                         off_loop=len(raw) > PREPARE_OFF_LOOP)
        status = 200
        return JSONResponse(body, headers={"Idempotent-Replayed": "true"} if replayed else None)
    except ApiError as e:
        status = e.status
        raise
    finally:
        rt.stats.request(status, len(req.queries), time.perf_counter() - t0)
