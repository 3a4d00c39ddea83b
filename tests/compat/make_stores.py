"""Write the frozen stores that ``test_old_stores.py`` reads: one of each model
kind (mlp, gpt, hf), built by the code of the day they were written, with the
scores that code read from them (``expected.json``).

Run once per store format, never to refresh: a later release must read these
bytes as they are. ``python -m tests.compat.make_stores tests/compat/format3``
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

QUERIES = ["s0x1 s0x2 w3 w4 s0x5", "w1 w2 s2x3 s2x4 w5 w6"]


def _scores(root: Path) -> dict:
    from influence.mlp.attributor import VectorAttributor
    from influence.store import open_store
    from influence.text.attributor import TextAttributor

    st = open_store(root)
    fmt = {"format_version": st.manifest.format_version}
    if st.manifest.model.kind == "mlp":
        import torch

        qs = json.loads((root / "versions" / st.version / "heldout.json").read_text())["queries"][:3]
        x = np.asarray([q["input"] for q in qs], dtype=np.float32)
        out = VectorAttributor(st, "cpu").score(torch.from_numpy(x))
        return {**fmt, "inputs": x.tolist(), "sources": out.sources.tolist(), "examples": out.examples.tolist()}
    att = TextAttributor(st, "cpu")
    out = att.score([att.encode(t) for t in QUERIES])
    return {**fmt, "texts": QUERIES, "logprob": out.logprob.tolist(), "sources": out.sources.tolist(),
            "examples": out.examples.tolist()}


def main(dest: Path) -> None:
    from tests.service.hf_store import build_hf_store
    from tests.text_corpus import TINY_TEXT_STORE, build_text_store
    from worker.config import load_config
    from worker.pipeline import build

    dest.mkdir(parents=True, exist_ok=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roots = {"mlp": tmp / "mlp"}
        build(load_config("tiny", overrides=[f'store.root="{roots["mlp"]}"', "data.limit=60"]), progress=False)
        for kind in ("gpt", "hf"):
            (tmp / kind).mkdir()
        roots["gpt"] = build_text_store(tmp / "gpt", *TINY_TEXT_STORE)
        roots["hf"] = build_hf_store(tmp / "hf")
        for kind, root in roots.items():
            current = (root / "CURRENT").read_text().strip()  # only the version served: older ones are not read
            shutil.copytree(root / "versions" / current, dest / kind / "versions" / current)
            shutil.copy(root / "CURRENT", dest / kind / "CURRENT")
            (dest / kind / "expected.json").write_text(json.dumps(_scores(dest / kind)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
