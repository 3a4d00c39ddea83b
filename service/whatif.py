"""``POST /v1/whatif``: the predicted change of each query's output if
sources were removed or re-weighted in training, first order from the
served store's per-source scores (``influence.whatif``: ``Δf(q) = Σ_s (w_s −
1) τ(q, s) / n``, ``n`` the examples or target tokens behind the mean training
loss), with the accuracy this store's audit measured for such a prediction.

Order of work: the scenario (source ids, weights) and the query limits are
checked first; the queries (inline, or the store's held-out sample) ride
the micro-batcher as a sources-only readout, in chunks of ``max_queries``,
their cost together bounded by ``max_request_cost`` (422 naming ``sample`` or
``queries``, before any readout);
nothing is recorded or cached (a what-if is a question about training, not
an answer that earns credit).
"""

from __future__ import annotations

import asyncio
import math

import numpy as np

from influence.whatif import predict

from . import heldout
from .errors import invalid
from .forms import NOT_FINITE, Form, query_field
from .schemas import AttributionRequest, WhatIfRequest
from .settings import Settings

MAX_WEIGHT = 1000.0  # a source counted at most this many times: beyond, a first-order prediction means nothing
FORMULA = "change(q) = sum over sources s of (w_s - 1) * score(q, s) / n  (removed: w_s = 0)"
_AUDIT_SCENARIOS = {"one_source_removed": "whatif_loso", "half_the_sources_removed": "whatif_subsets"}


def weights_of(req: WhatIfRequest, source_ids: list[str]) -> list[float]:
    """``(S,)`` training weights of the scenario (1 = as trained); 422 naming
    the field for an unknown id, a source named twice, a negative weight or
    a scenario that changes nothing."""
    index = {s: i for i, s in enumerate(source_ids)}
    w = [1.0] * len(source_ids)
    for i, sid in enumerate(req.remove):
        if sid not in index:
            raise invalid(f"remove[{i}]", f"unknown source id (the store has {len(source_ids)}: GET /v1/store)")
        if w[index[sid]] != 1.0:
            raise invalid(f"remove[{i}]", "source named twice")
        w[index[sid]] = 0.0
    for sid, v in req.weights.items():
        at = f"weights.{sid[:100]}"
        if sid not in index:
            raise invalid(at, f"unknown source id (the store has {len(source_ids)}: GET /v1/store)")
        if sid in req.remove:
            raise invalid(at, "this source is also in remove")
        if not math.isfinite(v) or not 0 <= v <= MAX_WEIGHT:
            raise invalid(at, f"a weight must be a number in [0, {MAX_WEIGHT:g}] (1 = as trained, 0 = removed)")
        w[index[sid]] = float(v)
    if all(x == 1.0 for x in w):
        raise invalid("remove", "name at least one source to remove, or a weight other than 1")
    return w


def scenario(w: list[float]) -> str:
    """Which audit measurement fits: one source removed and nothing else
    changed, or anything else (the audit's random halves of the sources)."""
    changed = [x for x in w if x != 1.0]
    return "one_source_removed" if changed == [0.0] else "half_the_sources_removed"


def accuracy(audit: dict | None, which: str, output: str) -> tuple[dict | None, str]:
    """(the audit's what-if accuracy for this scenario or None, a note saying what it means)."""
    if audit is None:
        return None, ("this store version has no audit: the prediction's accuracy is unmeasured (run `fa-worker "
                      "audit --store DIR` to measure it against retraining)")
    m = (audit.get("metrics") or {}).get(_AUDIT_SCENARIOS[which]) or {}
    # the audit's settings.output: "margin (true label)" (worker.audit) or "logprob (...)" (worker.audit_text)
    measured = str((audit.get("settings") or {}).get("output") or "margin").split()[0]
    acc = {"scenario": which, "output": measured, "audited_version": audit.get("audited_version"),
           "created_at": audit.get("created_at"),
           **{k: m.get(k) for k in ("pearson", "mae", "actual_mean_abs", "scale_fit")}}
    note = (f"measured by this store's audit ({audit.get('created_at')}) on its held-out queries: predicted vs "
            f"real change after retraining, for the audited scenario closest to this one: {which.replace('_', ' ')}")
    if output != measured:
        note += f"; the audit measured the {measured}, this answer is of the {output}"
    return acc, note


async def _sample(att, form: Form, n: int, s: Settings):
    """The store's first ``n`` held-out queries as request queries, and their ids."""
    if n > s.max_whatif_sample:
        raise invalid("sample", f"at most {s.max_whatif_sample} held-out queries per what-if")
    got = await asyncio.to_thread(heldout.queries, att, form, n)
    if got is None:
        raise invalid("sample", "this store has no held-out query sample (built-in digits and Brown stores "
                      "have one); send queries instead")
    return got


async def whatif(att, form: Form, audit: dict | None, batcher, s: Settings, req: WhatIfRequest) -> dict:
    """-> the ``WhatIfResponse`` body."""
    if (req.queries is None) == (req.sample is None):
        raise invalid("queries", "send either queries or sample (the store's held-out queries), not both"
                      if req.queries is not None else "send queries, or sample: the number of held-out queries")
    if req.queries is not None and len(req.queries) > s.max_queries:
        raise invalid("queries", f"at most {s.max_queries} queries per request, got {len(req.queries)}")
    man = att.manifest
    w = weights_of(req, man.source_ids)
    if req.queries is not None:
        queries, ids = req.queries, [q.client_id for q in req.queries]
    else:
        queries, ids = await _sample(att, form, req.sample, s)
    output, taus, chunks = None, [], []
    for start in range(0, len(queries), s.max_queries):
        areq = AttributionRequest.model_construct(queries=queries[start:start + s.max_queries], top_k=1,
                                                  granularity="sources", output=req.output, order="positive",
                                                  record=False)
        rows, tags = await asyncio.to_thread(form.prepare, att, areq, s)  # tokenizing texts: off the event loop
        output = form.output(areq)
        chunks.append((start, rows, len(tags)))
    form.within_budget(att, [rows for _, rows, _ in chunks], False, s, "sample" if req.sample is not None else
                       "queries")
    for start, rows, n_rows in chunks:  # (each chunk read out a block per batcher round, beside other requests)
        r = await form.submit(batcher, att, rows, n_rows, output, False, form.block(s))
        for j, ok in enumerate(form.finite(r)):
            if not ok:
                raise invalid(query_field(start + j, queries[start + j]), NOT_FINITE)
        taus += r.sources.double().tolist()
    n, unit = form.whatif_scale(man)
    pred = predict(taus, n, w)
    if not np.isfinite(pred.change).all():  # (bounded weights and finite scores make this unreachable)
        raise invalid("weights", "the predicted change is not a finite number")
    which = scenario(w)
    acc, note = accuracy(audit, which, output)
    return {"store_version": att.version, "output": output, "formula": FORMULA, "n": n, "n_unit": unit,
            "weights": {sid: x for sid, x in zip(man.source_ids, w, strict=True) if x != 1.0},
            "queries": [{"client_id": i, "change": c} for i, c in zip(ids, pred.change.tolist(), strict=True)],
            "mean_change": float(pred.mean), "accuracy": acc, "accuracy_note": note}
