"""Fingerprint CPU builds of the tiny presets (mlp, gpt, hf) and their
readouts, so that a refactor can prove itself: every stored file's sha256
(manifests compared with their timestamps and paths blanked) and the
scores of fixed queries.

    .venv/bin/python scripts/fingerprint.py OUT.json          # build and fingerprint
    .venv/bin/python scripts/fingerprint.py NEW.json --diff OLD.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def _steady(v):
    """A manifest without what differs run to run: timings, dates, the build's own paths."""
    if isinstance(v, dict):
        return {k: _steady(x) for k, x in v.items()
                if not (k in ("created_at", "seconds", "resumed_stages") or k.endswith("_s"))}
    return [_steady(x) for x in v] if isinstance(v, list) else v


def _digest(path: Path, root: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".json":
        text = raw.decode().replace(str(root.parent), "TMP")
        raw = json.dumps(_steady(json.loads(text)), sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _digest(p, root) for p in sorted(root.rglob("*")) if p.is_file()}


def _readout(root: Path) -> dict:
    from influence.store import open_store

    store = open_store(root)
    if store.manifest.model.kind == "mlp":
        from influence.mlp.attributor import VectorAttributor

        att = VectorAttributor(store, "cpu")
        x = torch.linspace(-1, 1, 3 * att.spec.in_dim).reshape(3, -1)
        s = att.score(x, None, "margin", examples=True)
        return {"sources": s.sources.tolist(), "examples": s.examples[:, :40].tolist()}
    from influence.text.attributor import TextAttributor

    att = TextAttributor(store, "cpu")
    texts = [d.get("snippet", "") for d in att.documents[:3]]
    qs = [att.encode(text=" ".join(t.split()[:k])) for t, k in zip(texts, (3, 5, 6), strict=True)]
    s = att.score(qs, examples=True)
    return {"logprob": s.logprob.tolist(), "sources": s.sources.tolist(), "examples": s.examples.tolist()}


def build_all(tmp: Path) -> dict[str, Path]:
    from tests.service.hf_store import build_hf_store
    from tests.text_corpus import build_text_store
    from worker.config import load_config
    from worker.pipeline import build

    build(load_config("tiny", overrides=[f'store.root="{tmp / "mlp"}"']), progress=False)
    (tmp / "gpt").mkdir()
    (tmp / "hf").mkdir()
    return {"mlp": tmp / "mlp", "gpt": build_text_store(tmp / "gpt", "method.compress_rank=16"),
            "hf": build_hf_store(tmp / "hf")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--diff", type=Path, help="an earlier fingerprint to compare with")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as t:
        roots = build_all(Path(t))
        fp = {k: {"files": _files(r), "readout": _readout(r)} for k, r in roots.items()}
    a.out.write_text(json.dumps(fp, indent=1))
    if a.diff is None:
        return 0
    old, bad = json.loads(a.diff.read_text()), 0
    for kind, new in fp.items():
        for name in sorted(set(old[kind]["files"]) | set(new["files"])):
            if old[kind]["files"].get(name) != new["files"].get(name):
                print(f"{kind}: {name} differs")
                bad += 1
        same = old[kind]["readout"] == new["readout"]
        print(f"{kind}: {len(new['files'])} files, readout {'equal' if same else 'DIFFERS'}")
        bad += not same
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
