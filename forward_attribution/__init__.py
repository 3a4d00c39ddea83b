"""The Python API: build a store, open it, score queries, in a notebook.

    import forward_attribution as fa

    path = fa.build(model="path/to/checkpoint", data="docs.jsonl", store="stores/mine")
    att = fa.Attributor(fa.open_store("stores/mine"))
    res = att.score(["The jury said the election was fair."])
    res.sources            # pandas DataFrame: one row per query, one column per source id (τ)
    res.documents          # one column per document id (text stores) or example index (vector stores)
    res.top("sources", 5)  # long frame: query, rank, id, score

The same engine as ``fa-worker`` (the CLI's ``build`` is this ``build``) and
the service; nothing here talks to HTTP or Redis. Scores ``τ(q, d)`` are the
forward readout's (``docs/method.md``): a text query's f is the mean
log-probability of its targets, a vector query's the margin of its predicted
class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from influence import registry
from influence.errors import InfluenceError, QueryError
from influence.mlp.attributor import VectorAttributor as _VectorAttributor
from influence.store import Store, open_store
from influence.text.attributor import TextAttributor as _TextAttributor

__all__ = ["Attribution", "Attributor", "InfluenceError", "Store", "build", "open_store"]


def build(model: str | Path | None = None, data: str | Path | None = None, store: str | Path | None = None,
          preset: str | None = None, settings: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Train or fine-tune, simulate the responses and publish a store version;
    returns the version's directory. ``model``: a local Hugging Face causal
    LM directory (preset ``hf``); ``data``: the training file (JSONL for text);
    ``settings``: dotted config keys, as ``fa-worker build --set`` takes them,
    e.g. ``{"method.steps": 30, "model.lora.r": 16}``."""
    import json

    from worker.config import load_config
    from worker.pipeline import build as _build

    over = [f"{k}={json.dumps(v)}" for k, v in (settings or {}).items()]
    for value, key in ((model, "model.path"), (data, "data.path"), (store, "store.root")):
        if value is not None:
            over.append(f"{key}={json.dumps(str(value))}")
    cfg = load_config(preset or ("hf" if model is not None else "digits"), None, over)
    return _build(cfg, progress=progress)


@dataclass
class Attribution:
    """Scores of a batch of queries, labelled. ``sources (Q, S)`` and
    ``documents (Q, n)`` frames of τ (``documents`` None when not read);
    ``f`` (Q,): a text query's mean target log-probability, a vector query's
    ensemble probability of its predicted class (the scores explain its margin)."""

    sources: pd.DataFrame
    documents: pd.DataFrame | None
    f: pd.Series

    def top(self, level: str = "sources", k: int = 5) -> pd.DataFrame:
        """The ``k`` largest τ per query at ``level`` ("sources" or "documents"),
        as a long frame ``query, rank, id, score``."""
        frame = {"sources": self.sources, "documents": self.documents}.get(level)
        if frame is None:
            raise QueryError("level", f"{level!r}: expected 'sources' or 'documents' (read with documents=True)")
        rows = []
        for q, row in frame.iterrows():
            best = row.nlargest(min(k, row.size))
            rows += [{"query": q, "rank": r + 1, "id": i, "score": float(v)} for r, (i, v) in enumerate(best.items())]
        return pd.DataFrame(rows, columns=["query", "rank", "id", "score"])


class Attributor:
    """A store resident on ``device`` (default: CUDA when present), for any
    model kind. ``score`` takes texts (text stores: a string, or a dict
    ``{"prompt", "completion"}`` scoring the completion) or an array
    ``(Q, d)`` of feature vectors (vector stores)."""

    def __init__(self, store: Store | str | Path, device: str | None = None):
        self.store = store if isinstance(store, Store) else open_store(store)
        man = self.store.manifest
        self.text = registry.of(man.model).text
        self._att = (_TextAttributor if self.text else _VectorAttributor)(self.store, device)
        self.source_ids = list(man.source_ids)
        self.document_ids = [d["id"] for d in self._att.documents] if self.text else \
            list(range(len(man.example_source)))

    def score(self, queries, documents: bool = True, batch: int = 16) -> Attribution:
        """τ of every source (and document) for each query; batches of
        ``batch`` queries per readout (the answer does not depend on it)."""
        if self.text:
            enc = [self._encode(q) for q in ([queries] if isinstance(queries, str | dict) else list(queries))]
            parts = [self._att.score(enc[i:i + batch], examples=documents) for i in range(0, len(enc), batch)]
            src = torch.cat([p.sources for p in parts])
            ex = torch.cat([p.examples for p in parts]) if documents else None
            f = torch.cat([p.logprob for p in parts])
        else:
            x = torch.as_tensor(np.asarray(queries, dtype=np.float32))
            sc = self._att.score(x[None] if x.dim() == 1 else x, examples=documents)
            src, ex = sc.sources, sc.examples if documents else None
            f = sc.probs.gather(1, sc.target[:, None])[:, 0]
        frame = lambda t, cols: pd.DataFrame(t.double().cpu().numpy(), columns=cols)  # noqa: E731
        return Attribution(frame(src, self.source_ids), None if ex is None else frame(ex, self.document_ids),
                           pd.Series(f.double().cpu().numpy(), name="f"))

    def _encode(self, q):
        if isinstance(q, str):
            return self._att.encode(q)
        if isinstance(q, dict) and q.keys() == {"prompt", "completion"}:
            return self._att.encode(None, q["prompt"], q["completion"])
        raise QueryError("queries", f"a text store takes strings or {{'prompt', 'completion'}} dicts, got {q!r:.80}")
