"""A fourth model kind, written here and nowhere else: one folder (a package
with ``kind.py``) and one registry line (``FA_KINDS``). The worker builds it,
the core reads it out, ``fa-worker score`` scores it and the service serves
it over loopback, with no line of the product naming it.

The kind, ``bigram``, is the smallest causal LM: logits = E[x] Wᵀ, both
trained, no attention. It implements the ``CausalLM`` protocol and no
hand-derived tangents, so its readout is the engine's ``torch.func`` path;
the test checks that readout against the gradient dot product ``∇f · u``
(exact rows, float32), which is what ``τ`` means for any kind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from ..text_corpus import TINY_GPT, write_corpus
from .util import REDIS_URL, wait_ready

REPO = Path(__file__).resolve().parents[2]

KIND_PY = '''
"""A bigram causal LM as a model kind of its own (the plug-in test's)."""
import time
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from influence.gpt.tokenizer import Tokenizer
from influence.kind import ModelKind
from influence.layout import ParamLayout
from influence.text.causal import lm_loss


class BigramSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["bigram"] = "bigram"
    vocab: int = 2000
    context: int = 64
    d: int = Field(6, ge=1)

    def layout(self):
        with torch.device("meta"):
            return ParamLayout.of(dict(Bigram(self).named_parameters()))


class Bigram(nn.Module):
    manual_tangents = False
    head_ok = True

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.emb = nn.Embedding(spec.vocab, spec.d)
        self.out = nn.Linear(spec.d, spec.vocab, bias=False)

    @property
    def context(self):
        return self.spec.context

    def forward(self, inp, trunk=False):
        h = self.emb(inp)
        return h if trunk else self.out(h)

    def trained(self):
        return dict(self.named_parameters())

    def head(self, params):
        return params["out.weight"], None, "out.weight"


def train(spec, blocks, seed, keep=None, **kw):
    torch.manual_seed(seed)
    model = Bigram(spec).to(blocks.device)
    data = blocks if keep is None else blocks[torch.as_tensor(keep, device=blocks.device)]
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    t0, loss = time.perf_counter(), None
    for _ in range(30):
        opt.zero_grad()
        loss = lm_loss(model, data)
        loss.backward()
        opt.step()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    return model, params, {"final_loss": float(loss), "seconds": time.perf_counter() - t0}


def load(store, device, dtype):
    tok = Tokenizer.from_json(store.assets["tokenizer.json"].decode())
    return Bigram(store.manifest.model).to(device, dtype), tok


KIND = ModelKind(name="bigram", spec=BigramSpec, queries="text", curvatures=("ggn", "fisher"),
                 recipes={None: frozenset({"seed", "device"})}, datasets=("brown",), load=load, train=train,
                 recipe={"optimizer": "adam", "lr": 0.05, "steps": 30})
'''

CHECK_PY = '''
import json, sys
import torch
from influence import registry
from influence.store import open_store
from influence.text.attributor import TextAttributor
from influence.text.lm_math import query_grads
from influence.text.causal import pad_right

store = open_store(sys.argv[1])
att = TextAttributor(store, "cpu")
texts = [" ".join(d["snippet"].split()[:k]) for d, k in zip(att.documents[:3], (4, 6, 9))]
qs = [att.encode(text=t) for t in texts]
s = att.score(qs, examples=True)
x, mask = pad_right([q.ids for q in qs])
g = query_grads(att.model, att.params[0], x, mask)
dot = g @ att.rows[0].T
print(json.dumps({"kind": type(att.model).__name__, "registered": sorted(registry.KINDS),
                  "n": att.n_examples, "S": att.n_sources,
                  "max_abs_err": float((s.examples - dot).abs().max()), "scale": float(dot.abs().max())}))
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The kind's package on disk and the environment that registers it."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "bigramkind").mkdir()
    (root / "bigramkind" / "__init__.py").write_text("")
    (root / "bigramkind" / "kind.py").write_text(textwrap.dedent(KIND_PY))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)]), "FA_KINDS": "bigramkind.kind",
           "OMP_WAIT_POLICY": "PASSIVE", "FA_TORCH_THREADS": "1"}
    return root, env


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bigram_store(plugin):
    root, env = plugin
    docs = write_corpus(root / "docs.jsonl")
    sets = [s for s in TINY_GPT if not s.startswith(("model.d=", "model.heads", "model.layers"))]
    args = ["-m", "worker", "build", "--preset", "brown", "--set", "model.kind=bigram", "--set", "model.d=5",
            "--set", f'data.path="{docs}"', "--set", f'store.root="{root / "store"}"', "--set", "store.quant_bits=0",
            *[a for s in sets for a in ("--set", s)]]
    r = _run(args, env, root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return root / "store"


def test_a_kind_of_ones_own_builds_and_reads_out_exactly(plugin, bigram_store):
    root, env = plugin
    man = json.loads(next((bigram_store / "versions").glob("v*/manifest.json")).read_text())
    assert man["model"] == {"kind": "bigram", "vocab": man["model"]["vocab"], "context": 64, "d": 5}
    assert man["recipe"]["optimizer"] == "adam" and 30 <= man["data"]["n"] < 40  # (some documents held out)
    (root / "check.py").write_text(CHECK_PY)
    r = _run([str(root / "check.py"), str(bigram_store)], env, root)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["kind"] == "Bigram" and got["registered"] == ["bigram", "gpt", "hf", "mlp"]
    assert (got["n"], got["S"]) == (man["data"]["n"], 3)
    assert got["scale"] > 0 and got["max_abs_err"] <= 1e-4 * got["scale"]  # τ = ∇f · u, float32


def test_without_its_registry_line_the_kind_is_refused_by_name(plugin, bigram_store):
    root, env = plugin
    bare = {k: v for k, v in env.items() if k != "FA_KINDS"}
    r = _run(["-m", "worker", "info", "--store", str(bigram_store)], bare, root)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "bigram" in r.stderr + r.stdout


def test_cli_scores_it_and_the_service_serves_it(plugin, bigram_store, prefix, tmp_path):
    root, env = plugin
    (tmp_path / "q.jsonl").write_text('{"text": "w1 w2 w3 w4"}\n{"text": "s0x1 s0x2 w5"}\n')
    r = _run(["-m", "worker", "score", "--store", str(bigram_store), "--queries", str(tmp_path / "q.jsonl"),
              "--out", str(tmp_path / "scores")], env, root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "scores" / "columns.json").is_file()
    data = tmp_path / "var"
    data.mkdir()
    log = tmp_path / "service.log"
    senv = {**env, "FA_REDIS_PREFIX": prefix, "FA_QUERY_KEYS": "plug-key", "FA_REPORT_KEYS": "plug-report"}
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0", "--store", str(bigram_store),
           "--data-dir", str(data), "--redis-url", REDIS_URL, "--log-level", "info"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=data, env=senv, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = _base_url(proc, log)
        assert wait_ready(base, time.time() + 300, interval=0.2), log.read_text()[-3000:]
        h = {"Authorization": "Bearer plug-key"}
        store = httpx.get(base + "/v1/store", headers=h, timeout=30).json()
        assert store["model"]["kind"] == "bigram"
        resp = httpx.post(base + "/v1/attributions", headers=h, timeout=60,
                          json={"queries": [{"text": "w1 w2 w3 w4"}], "granularity": "both", "top_k": 3})
        assert resp.status_code == 200, resp.text
        a = resp.json()["attributions"][0]
        assert len(a["sources"]) == 3 and len(a["examples"]) == 3 and a["n_targets"] == 3
    finally:
        proc.terminate()
        proc.wait(30)


def _base_url(proc: subprocess.Popen, log: Path, limit_s: float = 300) -> str:
    """The service's address from its log (port 0: the kernel picks one)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
        if m:
            return m.group(1)
        time.sleep(0.1)
    raise AssertionError(f"the service did not start:\n{log.read_text()[-3000:]}")
