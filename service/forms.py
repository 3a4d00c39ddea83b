"""Query forms: how a served store's requests are read, scored and answered,
picked by its model kind's query form (``influence.registry``: ``vector`` or
``text``), never by the kind's name.

``form_of(manifest)`` picks a :class:`Form` when a store version is loaded
(``Runtime.reload``); the runtime keeps it next to the attributor, and
``service.attribute`` only ever talks to that pair. A form knows

* how to load its attributor and probe that a query's numbers do not depend
  on the batch it rides in (``load``, ``invariant``);
* which query forms it takes and their limits (``prepare``: a 422 naming the
  field for anything else, before any work);
* what to hash for the result cache, how the batcher scores its rows and how
  a readout becomes answers and per-source credit (``answers``).

Forms: vector stores (``mlp``: ``{"input": [...], "target": c}``, outputs
margin / loss / logprob, :class:`VectorForm`) and text stores (``gpt``,
``hf``, any kind of the causal-LM engine: ``{"text": ...}`` or
``{"prompt": ..., "completion": ...}``, f = mean log-probability,
:class:`TextForm`; ``TextAttributor`` loads the model through its kind's
``load``). The kind's name, taken from the manifest, only names it in
messages.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from influence import registry
from influence.attributor import top_k
from influence.blocks import batch_invariant, by_bucket, length_buckets, text_batch_invariant, text_readout_rows
from influence.errors import InfluenceError, QueryError, StoreError
from influence.mlp.attributor import VectorAttributor
from influence.store import Manifest, Store
from influence.text.attributor import TextAttributor
from influence.text.attributor import TextQuery as Encoded

from .batcher import Batcher, Piece
from .credit import credit, output_sign
from .errors import ApiError, invalid
from .per_token import finite, token_answer
from .schemas import AttributionRequest, PromptQuery, Query, TextQuery
from .settings import Settings

Answers = list[tuple[dict, dict[str, int]]]  # per query: (attribution, credit units by source id)
SNIPPET_CHARS = 200  # of a document's snippet in an answer


class Form:
    """The interface; see the module doc. ``rows`` is whatever the kind's
    readout takes for a request's queries; ``tags`` are per query
    ``(text, bytes)`` that identify it in the result cache."""

    name: str
    playground = False  # the dashboard playground's example endpoints serve it (vector inputs)
    text = False  # takes text queries ({"text"} / {"prompt", "completion"})

    def load(self, store: Store, s: Settings):
        """The resident attributor of ``store`` on ``s.device``."""
        raise NotImplementedError

    def invariant(self, att, block: int, stop=None) -> bool | None:
        """Whether a query's numbers do not depend on its place in a block (None: stopped first)."""
        raise NotImplementedError

    def block(self, s: Settings) -> int:
        """Rows per readout call for this kind."""
        return s.readout_block

    def output(self, req: AttributionRequest) -> str:
        raise NotImplementedError

    def prepare(self, att, req: AttributionRequest, s: Settings) -> tuple[object, list[tuple[str, bytes]]]:
        raise NotImplementedError

    def take(self, rows, idx: list[int]):
        raise NotImplementedError

    def cost(self, att, rows, examples: bool) -> int:
        """What reading ``rows`` out costs, in token-rows (``COST_UNIT``)."""
        raise NotImplementedError

    def rows_read(self, att, examples: bool) -> int:
        """Stored rows (forward tangents for a text store) one query is read against."""
        raise NotImplementedError

    def lengths(self, att) -> list[int]:
        """The positions a query row can carry: its length buckets (a vector query: 1)."""
        return [1]

    def cost_card(self, att, s: Settings) -> dict:
        """What a query costs on this store, as ``max_request_cost`` counts it (``/v1/store`` ``cost``):
        rows read per query at each granularity and the cost per query at each length bucket."""
        rows = {"sources": self.rows_read(att, False), "documents": self.rows_read(att, True)}
        return {"unit": COST_UNIT, "max_request_cost": s.max_request_cost, "rows_read": rows,
                "per_query": [{"tokens": n, **{k: n * v for k, v in rows.items()}} for n in self.lengths(att)],
                "resident_rows_bytes": att.resident_bytes(), "packed_rows": att.packed}

    def within_budget(self, att, parts: list, examples: bool, s: Settings, at: str = "queries") -> int:
        """The cost of reading out every ``rows`` of ``parts``; a 422 naming
        ``at`` and the cost beyond ``s.max_request_cost`` (before any work)."""
        cost = sum(self.cost(att, rows, examples) for rows in parts)
        if cost > s.max_request_cost:
            hint = "; granularity sources reads fewer rows" if examples else ""
            raise invalid(at, f"this request would cost {cost:,} {COST_UNIT} (each query's positions times the "
                          f"store rows it is read against), more than max_request_cost {s.max_request_cost:,}: "
                          f"send fewer or shorter queries{hint}")
        return cost

    def submit(self, batcher: Batcher, att, rows, n: int, output: str, examples: bool, block: int,
               per_token: bool = False) -> Awaitable:
        """Queue ``rows`` for the readout; ``per_token`` (text kinds, checked
        by ``prepare``): with every scored token's scores."""
        raise NotImplementedError

    def answers(self, att, req: AttributionRequest, output: str, s: Settings, r, rows) -> Answers:
        """Per row of readout ``r``: the answer and its credit; ``NotFinite``
        for a row whose numbers are not all finite (checked on the lists the
        answer is built from, before any of it)."""
        raise NotImplementedError

    def whatif_scale(self, manifest: Manifest) -> tuple[int, str]:
        """The ``n`` of the what-if's ``−τ/n`` (``influence.whatif``): what the
        mean training loss averages over, and its unit."""
        raise NotImplementedError

    def finite(self, r) -> list[bool]:
        """Per row of a readout: every number of its answer is finite (an
        input with huge values can overflow the model: such a query is a
        422, never an answer holding null)."""
        ok = torch.isfinite(r.sources).all(1)
        if r.examples is not None:
            ok &= torch.isfinite(r.examples).all(1)
        return (ok & torch.isfinite(self._outputs(r)).reshape(len(ok), -1).all(1)).tolist()

    def _outputs(self, r) -> torch.Tensor:
        raise NotImplementedError


COST_UNIT = "token-rows"  # one query position carried through one stored response row (a vector query: 1 position)
NOT_FINITE = "the model's output or scores for this query are not finite numbers (values too large)"


class NotFinite(Exception):
    """Raised by ``Form.answers`` for the first row (of the readout) whose
    numbers are not all finite: the request is a 422 naming that query."""

    def __init__(self, row: int):
        super().__init__(row)
        self.row = row


def _examples_finite(r) -> list[bool] | None:
    return None if r.examples is None else torch.isfinite(r.examples).all(1).tolist()


def _row_finite(*rows: list[float]) -> bool:
    """Every value finite: a sum of floats is inf or nan exactly when one of
    them is (float32 values summed in float64 cannot overflow)."""
    return all(math.isfinite(sum(row)) for row in rows)


def query_field(i: int, q) -> str:
    """The path of the query's own content: ``queries[i].input`` / ``.text`` / ``.completion``."""
    return f"queries[{i}]." + ("input" if isinstance(q, Query) else "text" if isinstance(q, TextQuery)
                               else "completion")


def _wrong_form(i: int, q) -> str:
    return f"queries[{i}]." + ("input" if isinstance(q, Query) else "text" if isinstance(q, TextQuery) else "prompt")


def _tops(r, req: AttributionRequest):
    """Iterators of (values, indices) rows of the top sources / examples (or None)."""
    src_top = ex_top = None
    if req.granularity in ("sources", "both"):
        vals, idx = top_k(r.sources, req.top_k, req.order)
        src_top = zip(vals.tolist(), idx.tolist(), strict=True)
    if req.granularity in ("examples", "both"):
        vals, idx = top_k(r.examples, req.top_k, req.order)
        ex_top = zip(vals.tolist(), idx.tolist(), strict=True)
    return src_top, ex_top


# ---- vector stores (model.kind == "mlp") --------------------------------------------------------------------------
class VectorForm(Form):
    """A vector store of kind ``name`` (``mlp``, or any kind whose queries are vectors)."""

    playground = True

    def __init__(self, name: str):
        self.name = name

    def load(self, store: Store, s: Settings) -> VectorAttributor:
        return VectorAttributor(store, s.device)

    def invariant(self, att: VectorAttributor, block: int, stop=None) -> bool | None:
        return batch_invariant(att, block, stop=stop)

    def whatif_scale(self, manifest: Manifest) -> tuple[int, str]:
        return len(manifest.example_source), "training examples"

    def _outputs(self, r) -> torch.Tensor:
        return r.probs

    def output(self, req: AttributionRequest) -> str:
        return req.output or "margin"

    def prepare(self, att: VectorAttributor, req: AttributionRequest, s: Settings):
        """Shapes and values -> (x ``(B, d)`` float32, y ``(B,)`` (-1 = predicted))."""
        d, c = att.spec.in_dim, att.spec.n_classes
        if req.per_token:
            raise invalid("per_token", f"this store holds a classifier (kind {self.name}): a vector query has no "
                          "tokens (per_token is for text stores)")
        if req.granularity != "sources" and att.rows is None:
            raise invalid("granularity", "this store holds no per-example responses")
        for i, q in enumerate(req.queries):
            if not isinstance(q, Query):
                raise invalid(_wrong_form(i, q), f'this store holds a classifier (kind {self.name}): it takes '
                              'numeric queries {"input": [...]}, not text')
            if len(q.input) != d:
                raise invalid(f"queries[{i}].input", f"expected {d} values, got {len(q.input)}")
            if q.target is not None and not 0 <= q.target < c:
                raise invalid(f"queries[{i}].target", f"must be a class index in [0, {c})")
        with np.errstate(over="ignore"):  # a finite float64 beyond float32's range becomes inf: rejected below
            xn = np.array([q.input for q in req.queries], dtype=np.float32)
        finite = np.isfinite(xn).all(1)
        if not finite.all():
            raise invalid(f"queries[{int(np.argmin(finite))}].input", "values must be finite float32 numbers")
        ys = [-1 if q.target is None else q.target for q in req.queries]
        tags = [(str(t), row.tobytes()) for t, row in zip(ys, xn, strict=True)]  # (numpy rows: no torch op each)
        return (torch.from_numpy(xn), torch.tensor(ys, dtype=torch.long)), tags

    def take(self, rows, idx: list[int]):
        x, y = rows
        return x[idx], y[idx]

    def cost(self, att: VectorAttributor, rows, examples: bool) -> int:
        """A query is one position read against every source row, and every
        example row when ``examples``."""
        return rows[0].shape[0] * self.rows_read(att, examples)

    def rows_read(self, att: VectorAttributor, examples: bool) -> int:
        return len(att.manifest.source_ids) + (len(att.manifest.example_source) if examples else 0)

    def submit(self, batcher: Batcher, att, rows, n: int, output: str, examples: bool, block: int,
               per_token: bool = False):
        return batcher.submit(att, rows[0], rows[1], output, examples, block)

    def answers(self, att: VectorAttributor, req: AttributionRequest, output: str, s: Settings, r, rows) -> Answers:
        """Top-k runs once over the batch's rows, tensors become lists once."""
        man = att.manifest
        probs, preds, tgts = r.probs.tolist(), r.pred.tolist(), r.target.tolist()
        src_rows = r.sources.tolist()
        ex_ok = _examples_finite(r)
        for j, (p, row) in enumerate(zip(probs, src_rows, strict=True)):
            if not (_row_finite(p, row) and (ex_ok is None or ex_ok[j])):
                raise NotFinite(j)
        src_top, ex_top = _tops(r, req)
        sign, ids, ex_src = output_sign(output), man.source_ids, man.example_source
        out = []
        for j, (p, pred, tgt) in enumerate(zip(probs, preds, tgts, strict=True)):
            a = {"prediction": {"index": pred, "label": man.classes[pred], "probability": p[pred]},
                 "target": {"index": tgt, "label": man.classes[tgt], "probability": p[tgt]},
                 "sources": None, "examples": None, "cached": False}
            if src_top is not None:
                vs, ix = next(src_top)
                a["sources"] = [{"id": ids[i], "score": v} for v, i in zip(vs, ix, strict=True)]
            if ex_top is not None:
                vs, ix = next(ex_top)
                a["examples"] = [{"index": i, "source": ids[ex_src[i]], "score": v}
                                 for v, i in zip(vs, ix, strict=True)]
            units = credit(src_rows[j], s.credit_units, s.credit_rule, sign)
            out.append((a, {ids[i]: u for i, u in units.items()}))
        return out


# ---- text stores (model.kind == "gpt" or "hf") -----------------------------------------------------------------------
@dataclass
class TextReadout:
    """One request's rows of a batched text readout (CPU): ``logprob (b,)``,
    ``token_logprobs`` per query, ``sources (b, S)``, ``examples (b, n)``
    (None when no request of the batch asked for documents)."""

    version: str
    logprob: torch.Tensor
    token_logprobs: list[list[float]]
    sources: torch.Tensor
    examples: torch.Tensor | None
    token_sources: list[torch.Tensor] | None = None  # per_token reads: per query (n_targets, S)
    queue_s: float = 0.0
    readout_s: float = 0.0
    batch_queries: int = 0


def text_readout(att: TextAttributor, rows: list[list[Encoded]], examples: list[bool], block: int,
                 per_token: bool = False) -> list[TextReadout]:
    """The text store's ``ReadoutFn`` (``service.batcher``). Documents are
    read when any request of the batch wants them (a store with per-source
    rows reads its sources from those either way: the same numbers).
    ``per_token``: every request of the batch asked for per-token scores
    (they batch in a group of their own)."""
    lp, toks, src, ex, *pt = text_readout_rows(att, [q for r in rows for q in r], block, any(examples), per_token)
    out, s = [], 0
    for r in rows:
        e = s + len(r)
        out.append(TextReadout(att.version, lp[s:e], toks[s:e], src[s:e], None if ex is None else ex[s:e],
                               pt[0][s:e] if pt else None))
        s = e
    return out


class TextForm(Form):
    """A text store of kind ``name`` (``gpt`` or ``hf``): one implementation,
    the tokenizer, context and documents are the store's own."""

    text = True

    def __init__(self, name: str):
        self.name = name

    def load(self, store: Store, s: Settings) -> TextAttributor:
        return TextAttributor(store, s.device, tangent_dtype=getattr(torch, s.text_tangent_dtype))

    def invariant(self, att: TextAttributor, block: int, stop=None) -> bool | None:
        return text_batch_invariant(att, block, stop)

    def whatif_scale(self, manifest: Manifest) -> tuple[int, str]:
        return int(manifest.data["n_targets"]), "training target tokens"

    def _outputs(self, r) -> torch.Tensor:
        return r.logprob

    def block(self, s: Settings) -> int:
        return s.text_readout_block

    def output(self, req: AttributionRequest) -> str:
        return "logprob"

    def prepare(self, att: TextAttributor, req: AttributionRequest, s: Settings):
        """Forms and limits (characters, then tokens: at least 2, at most the
        context + 1, checked by the one encoding) -> encoded queries."""
        if req.output not in (None, "logprob"):
            raise invalid("output", "a text store answers logprob only (f = mean log-probability of the tokens)")
        out = []
        for i, q in enumerate(req.queries):
            at = f"queries[{i}]"
            if isinstance(q, Query):
                raise invalid(f"{at}.input", f'this store holds a language model (kind {self.name}): it takes '
                              'text queries {"text": "..."} or {"prompt": "...", "completion": "..."}, not numbers')
            if isinstance(q, TextQuery):
                fields = [f"{at}.text"]
                chars = len(q.text)
            else:
                fields = [f"{at}.prompt", f"{at}.completion"]
                chars = len(q.prompt) + len(q.completion)
            if chars > s.max_text_chars:
                _refuse(fields, f"at most {s.max_text_chars} characters per query, got {chars}")
            try:  # tokenised once, in the core: its refusals name the query's own field(s)
                if isinstance(q, PromptQuery):
                    e = att.encode(prompt=q.prompt, completion=q.completion, pretokenized=q.pretokenized)
                else:
                    e = att.encode(text=q.text, pretokenized=q.pretokenized)
            except QueryError as err:
                _refuse([f"{at}.{f}" for f in err.fields], err.problem)
            if req.per_token and e.n_targets > s.max_per_token_targets:
                _refuse([*fields, "per_token"], f"{e.n_targets} scored tokens: at most {s.max_per_token_targets} "
                        "per query with per_token (max_per_token_targets)")
            out.append(e)
        # the text is part of the tag: texts with the same ids (whitespace, a prefix space) have their own pieces
        tags = [(f"text:{e.n_targets}", np.asarray(e.ids, dtype=np.int64).tobytes() + _text_bytes(q))
                for e, q in zip(out, req.queries, strict=True)]
        return out, tags

    def take(self, rows, idx: list[int]):
        return [rows[i] for i in idx]

    def cost(self, att: TextAttributor, rows: list[Encoded], examples: bool) -> int:
        """Each query's length bucket (the positions its readout row carries)
        times the tangents it is read against (``TextAttributor.tangents``)."""
        groups = by_bucket(rows, att.spec.context)
        return sum(length * len(idx) for length, idx in groups.items()) * att.tangents(examples)

    def rows_read(self, att: TextAttributor, examples: bool) -> int:
        return att.tangents(examples)

    def lengths(self, att: TextAttributor) -> list[int]:
        return length_buckets(att.spec.context)

    def submit(self, batcher: Batcher, att, rows, n: int, output: str, examples: bool, block: int,
               per_token: bool = False):
        """One piece per readout block: the queries of one length bucket,
        ``block`` at a time (so a piece never pads a block it shares);
        per-token requests share readouts only with each other (the
        sequence scores are the same numbers either way)."""
        pieces = [Piece([rows[i] for i in idx[s:s + block]], len(idx[s:s + block]), idx[s:s + block])
                  for idx in by_bucket(rows, att.spec.context).values() for s in range(0, len(idx), block)]
        return batcher.submit_rows(att, rows, n, (id(att), "text", block, per_token), examples,
                                   partial(text_readout, block=block, per_token=per_token), pieces)

    def answers(self, att: TextAttributor, req: AttributionRequest, output: str, s: Settings, r, rows) -> Answers:
        man, docs = att.manifest, att.documents
        ids = man.source_ids
        names = man.extra.get("source_names") or ids
        lps, src_rows = r.logprob.tolist(), r.sources.tolist()
        ex_ok = _examples_finite(r)
        for j, (lp, row, toks) in enumerate(zip(lps, src_rows, r.token_logprobs, strict=True)):
            if not (_row_finite([lp], row, toks) and (ex_ok is None or ex_ok[j])):
                raise NotFinite(j)
            if req.per_token and not finite(r.token_sources[j]):
                raise NotFinite(j)
        src_top, ex_top = _tops(r, req)
        sign = output_sign(output)
        out = []
        for j, q in enumerate(rows):
            a = {"logprob": lps[j], "token_logprobs": r.token_logprobs[j], "tokens": q.tokens,
                 "n_tokens": len(q.ids), "n_targets": q.n_targets, "oov": q.oov, "sources": None, "examples": None,
                 "cached": False}
            if src_top is not None:
                vs, ix = next(src_top)
                a["sources"] = [{"id": ids[i], "name": names[i], "score": v} for v, i in zip(vs, ix, strict=True)]
            if ex_top is not None:
                vs, ix = next(ex_top)
                a["examples"] = [_document(docs, i, v) for v, i in zip(vs, ix, strict=True)]
            if req.per_token:
                a["per_token"], a["spans"] = token_answer(q, r.token_sources[j], r.token_logprobs[j], ids, names,
                                                          req.token_top_k, req.order)
                a["cached"] = a.pop("cached")  # (last, as without per_token)
            units = credit(src_rows[j], s.credit_units, s.credit_rule, sign)
            out.append((a, {ids[i]: u for i, u in units.items()}))
        return out


def _document(docs: list[dict], i: int, score: float) -> dict:
    d = docs[i]
    out = {"index": i, "id": str(d["id"]), "source": d["source"]}
    if d.get("genre") is not None:
        out["genre"] = d["genre"]
    snip = d.get("snippet", "")
    out["snippet"] = snip if len(snip) <= SNIPPET_CHARS else snip[:SNIPPET_CHARS - 1] + "…"
    out["score"] = score
    return out


def _text_bytes(q) -> bytes:
    """A text query's own characters for its cache tag (lengths first, so no two splits collide)."""
    parts = [q.text] if isinstance(q, TextQuery) else [q.prompt, q.completion]
    raw = [t.encode("utf-8", "surrogatepass") for t in parts]
    return b"".join(len(r).to_bytes(8, "little") + r for r in raw)


def _refuse(fields: list[str], reason: str):
    raise ApiError(422, "invalid_request", f"{fields[0]}: {reason}", [(f, reason) for f in fields])


FORMS: dict[str, type[Form]] = {"vector": VectorForm, "text": TextForm}  # by the model kind's query form


def form_of(manifest: Manifest) -> Form:
    """What serves a store version: its model kind's query form (``influence.registry``), named after the kind."""
    try:
        form = registry.of(manifest.model)
    except InfluenceError as e:
        raise StoreError(f"store {manifest.version}: {e}") from None
    if form.name not in _SERVING:
        _SERVING[form.name] = FORMS[form.queries](form.name)
    return _SERVING[form.name]


_SERVING: dict[str, Form] = {}
