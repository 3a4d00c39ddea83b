"""The README's "Your own model" commands, run as written (issue 29's
new-user check): the build, score and audit lines with the README's own
arguments and defaults (the plan first), only the paths pointed at a tiny Qwen2 checkpoint
(an architecture the project did not ship) and a corpus of short and long
documents; ``.venv/bin/python`` is this interpreter."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from influence.store import open_store

from ..hf.conftest import save_tiny_checkpoint
from ..text_corpus import write_short_and_long

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Your own model[^\n]*\n\n((?:    .*\n)+)", text).group(1)
    lines = [ln.strip().split("#")[0].strip() for ln in block.splitlines()]
    return [shlex.split(ln) for ln in lines if ln.startswith(".venv/bin/python -m worker")]


def test_the_readme_commands_run_as_written(tmp_path):
    cmds = _commands()
    assert [c[3] for c in cmds] == ["plan", "build", "score", "audit", "build"]  # the README's worker lines
    data = write_short_and_long(tmp_path / "docs.jsonl")
    texts = [json.loads(x)["text"] for x in data.read_text().splitlines()]
    save_tiny_checkpoint(tmp_path / "path" / "to" / "checkpoint", texts, family="qwen2")
    (tmp_path / "q.jsonl").write_text(json.dumps({"text": "s0x1 s0x2 s0x3 w4"}) + "\n")
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"text": f"w{i} s{i % 3}x{i} w{i + 1} w3"}) + "\n"
                                                    for i in range(6)))
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    for cmd in cmds[:4]:  # the brown-ft preset (minutes) is the benchmark's own, tested elsewhere
        r = subprocess.run([sys.executable, *cmd[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                           env=env)
        assert r.returncode == 0, f"{shlex.join(cmd)}\n{r.stderr[-3000:]}"
    store = open_store(tmp_path / "stores" / "mine")
    assert store.manifest.model.architecture == "Qwen2ForCausalLM"
    assert store.manifest.data["coverage"]["documents_trained"] == 52
    assert np.load(tmp_path / "out" / "sources.npy").shape == (1, 4)
    assert store.audit is not None and store.audit["store_kind"] == "hf"
