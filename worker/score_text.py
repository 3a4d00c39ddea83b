"""``fa-worker score`` for a text store: a JSONL query file in, score
matrices and a readable summary out (forward-only readout).

``--per-token`` also writes every scored token's own scores τ_t (the
completion's tokens for a prompt + completion query; a query's rows of
``sources.npy`` / ``examples.npy`` are their means), from the same tangents:

    per_token.safetensors  "sources" (N, S) float32, "examples" (N, n) float32,
                           "query" (N,) int64 (line order of the queries read),
                           "position" (N,) int64 (the token's index in the query's ids),
                           "token_id" (N,) int64
    per_token.json         "sources": the S column ids, "examples": the n document ids,
                           "queries": per query its rows [first, end) and per scored
                           token its piece of the text (the completion's), start_char,
                           end_char (the pieces join back into the scored text)

``N`` is the scored tokens of all queries together, in query order.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from influence.attributor import top_k
from influence.datasets.jsonl import read_lines
from influence.errors import DataError, QueryError
from influence.store import Store
from influence.text.attributor import TextAttributor, TextQuery

from .score_out import write_scores

BATCH = 16


def read_queries(path: Path, att: TextAttributor) -> list[TextQuery]:
    """Each line ``{"text": str}`` or ``{"prompt": str, "completion": str}``,
    optional ``"pretokenized": bool`` (whitespace-separated corpus tokens);
    errors name the file, the line and the field."""
    lines = read_lines(path)
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {no}"
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(path, f"{where}: not valid JSON: {e}") from None
        if not isinstance(rec, dict):
            raise DataError(path, f"{where}: expected a JSON object")
        pre = rec.get("pretokenized", False)
        if not isinstance(pre, bool):
            raise DataError(path, f"{where}: field 'pretokenized' must be true or false")
        if "text" not in rec and not {"prompt", "completion"} & rec.keys():
            raise DataError(path, f"{where}: expected a field 'text', or 'prompt' and 'completion' "
                                  f"(got {', '.join(map(repr, rec)) or 'no field'})")
        keys = ("text",) if "text" in rec else ("prompt", "completion")
        for k in keys:
            if not isinstance(rec.get(k), str) or not rec[k].strip():
                raise DataError(path, f"{where}: field {k!r} must be a non-empty string")
        try:
            out.append(att.encode(rec.get("text"), rec.get("prompt"), rec.get("completion"), pre))
        except QueryError as e:
            raise DataError(path, f"{where}: {e}") from None
    if not out:
        raise DataError(path, "no queries")
    return out


def _write_per_token(out: Path, att: TextAttributor, qs: list[TextQuery], parts) -> str:
    """``per_token.safetensors`` and ``per_token.json`` (module doc) -> what was written."""
    src = torch.cat([t for p in parts for t in p.token_sources]).float().cpu().contiguous()
    ex = torch.cat([t for p in parts for t in p.token_examples]).float().cpu().contiguous()
    rows, meta, at = [], [], 0
    for i, q in enumerate(qs):
        first = len(q.ids) - q.n_targets
        rows += [(i, first + t, q.ids[first + t]) for t in range(q.n_targets)]
        meta.append({"rows": [at, at + q.n_targets],
                     "tokens": [{"piece": q.target_text[a:b], "start_char": a, "end_char": b}
                                for a, b in q.target_spans]})
        at += q.n_targets
    cols = torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)
    save_file({"sources": src, "examples": ex, "query": cols[:, 0].contiguous(), "position": cols[:, 1].contiguous(),
               "token_id": cols[:, 2].contiguous()}, str(out / "per_token.safetensors"))
    man = att.manifest
    (out / "per_token.json").write_text(json.dumps({
        "sources": man.source_ids, "examples": [str(d["id"]) for d in att.documents], "queries": meta},
        ensure_ascii=False))
    return f", per_token.safetensors sources {tuple(src.shape)} examples {tuple(ex.shape)}, per_token.json"


def score_text(store: Store, queries: Path, out: Path, k: int, device: str | None, fmt: str = "npy",
               per_token: bool = False) -> str:
    att = TextAttributor(store, device)
    qs = read_queries(Path(queries), att)
    parts = [att.score(qs[s : s + BATCH], per_token=per_token) for s in range(0, len(qs), BATCH)]
    ex = torch.cat([p.examples for p in parts]).cpu()
    src = torch.cat([p.sources for p in parts]).cpu()
    f = torch.cat([p.logprob for p in parts]).cpu()
    man, docs = store.manifest, att.documents
    written = write_scores(out, ex.numpy(), src.numpy(), [d["id"] for d in docs], man.source_ids, fmt)
    names = man.extra.get("source_names", man.source_ids)
    sv, si = top_k(src, k)
    ev, ei = top_k(ex, k)
    lines = [f"store {store.path} ({man.version}); f = mean log-probability of the targets; "
             f"{len(qs)} queries; {att.tangents_per_query} forward tangents per query"]
    for q in range(len(qs)):
        lines.append(f"query {q}: f = {f[q]:.4f} over {qs[q].n_targets} targets, {qs[q].oov} out of vocabulary")
        lines += [f"  source   {v:+.4g}  {names[j]} ({man.source_ids[j]})" for v, j in zip(sv[q].tolist(),
                                                                                         si[q].tolist())]
        lines += [f"  document {v:+.4g}  {docs[j]['id']} [{docs[j].get('genre', docs[j]['source'])}] "
                  f"{docs[j]['snippet'][:80]}" for v, j in zip(ev[q].tolist(), ei[q].tolist())]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    more = _write_per_token(out, att, qs, parts) if per_token else ""
    return f"wrote {out}/: {', '.join(written)}, summary.txt{more}"
