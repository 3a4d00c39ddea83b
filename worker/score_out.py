"""What ``fa-worker score`` writes, for every store kind: the score matrices
and, beside them, which column is which source and document.

- ``sources.npy`` (Q, S) and ``examples.npy`` (Q, n), float32 τ;
- ``columns.json``: ``{"sources": [S ids], "examples": [n ids]}`` in column order
  (text stores: document ids; vector stores: training-example indices);
- ``--format csv`` or ``parquet`` also writes ``sources.<ext>`` and
  ``examples.<ext>``: one row per query (column ``query``, its line order),
  one column per id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

FORMATS = ("npy", "csv", "parquet")


def write_scores(out: Path, examples: np.ndarray, sources: np.ndarray, example_ids: list, source_ids: list[str],
                 fmt: str = "npy") -> list[str]:
    """Write the files above under ``out``; returns their names with shapes, for the CLI's line."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {FORMATS}")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "examples.npy", examples)
    np.save(out / "sources.npy", sources)
    (out / "columns.json").write_text(json.dumps({"sources": list(source_ids), "examples": list(example_ids)}))
    written = [f"examples.npy {examples.shape}", f"sources.npy {sources.shape}", "columns.json"]
    if fmt != "npy":
        for name, m, ids in (("sources", sources, source_ids), ("examples", examples, example_ids)):
            frame = pd.DataFrame(m, columns=[str(i) for i in ids])
            frame.insert(0, "query", np.arange(len(m)))
            path = out / f"{name}.{fmt}"
            frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
            written.append(path.name)
    return written
