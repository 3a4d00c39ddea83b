"""A store's held-out query sample: queries the model never trained on,
chosen by the dataset the store was built from and published by the worker
as the store asset ``heldout.json`` (``HeldoutSample``), so that whoever
reads the store (the service's playground and what-if ``sample``, the
audit) needs to know no dataset by name.

Queries are in the order to offer them: the first ``n`` are the sample of
``n``. A vector store's are ``{"id", "input", "target"}``; a text store's
``{"id", "text", "document", "source", "genre"}`` (``text``: words joined
by single spaces; a reader truncates it to its model's context). A store
without the asset has no held-out sample (stores published before the
asset existed, and user corpora that hold none).
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

HELDOUT_ASSET = "heldout.json"


class HeldoutQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., description="test-<row> (vector) or heldout-<document id> (text)")
    input: list[float] | None = None
    target: int | None = None
    text: str | None = None
    document: str | None = None
    source: str | None = None
    genre: str | None = None


class HeldoutSample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str  # what the queries are, for a person: "the digits test split", ...
    queries: list[HeldoutQuery]

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> HeldoutSample:
        return cls.model_validate(json.loads(blob))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """A vector sample as ``(X (n, d) float32, y (n,) int64)``."""
        X = np.array([q.input for q in self.queries], dtype=np.float32)
        return X, np.array([q.target for q in self.queries], dtype=np.int64)


def asset(sample: HeldoutSample | None) -> dict[str, bytes]:
    """The store assets for ``sample``: ``{"heldout.json": ...}``, or none without one."""
    return {} if sample is None else {HELDOUT_ASSET: sample.to_bytes()}


def spread(labels, n: int) -> list[int]:
    """Up to ``n`` indices into ``labels``: the first of each label (in
    sorted label order) first, then the rest in order. A prefix of
    ``spread(labels, N)`` is ``spread(labels, n)`` for every ``n <= N``."""
    first: dict = {}
    for i, c in enumerate(labels):
        first.setdefault(c, i)
    picked = [first[c] for c in sorted(first)][:n]
    taken = set(picked)
    return picked + [i for i in range(len(labels)) if i not in taken][: n - len(picked)]


def window(words, length: int) -> list[str]:
    """``length`` words from the start of a text's second sentence, cut
    after the window's last full stop when that is in its second half."""
    toks = list(words)
    start = next((i + 1 for i, t in enumerate(toks[: max(0, len(toks) - length)]) if t == "."), 0)
    w = toks[start : start + length]
    ends = [i for i, t in enumerate(w) if t == "." and i >= length // 2]
    return w[: ends[-1] + 1] if ends else w
