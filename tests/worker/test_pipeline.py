"""End to end on the tiny preset: deterministic builds, a loadable store whose
readout is consistent (sources == sums of examples, batch invariance)."""

from __future__ import annotations

import torch

from influence.attributor import top_k
from influence.datasets.vectors import load_digits_test
from influence.mlp.attributor import VectorAttributor
from influence.store import list_versions, open_store
from worker.config import load_config
from worker.pipeline import build


def test_build_is_deterministic(tmp_path, tiny_store):
    build(load_config("tiny", overrides=[f'store.root="{tmp_path}"']), progress=False)
    a, b = open_store(tiny_store), open_store(tmp_path)
    assert a.manifest.data == b.manifest.data
    for blocks_a, blocks_b in ((a.params, b.params), (a.examples, b.examples), (a.sources, b.sources)):
        for k, v in blocks_a[0].items():
            assert torch.equal(v, blocks_b[0][k]), k


def test_store_contents(tiny_store):
    st = open_store(tiny_store)
    man = st.manifest
    assert len(man.example_source) == 120 and len(man.source_ids) == 5
    assert st.examples[0]["0.weight"].shape == (120, 12, 64)
    assert st.sources[0]["2.bias"].shape == (5, 10)
    assert man.extra["members"][0]["train_accuracy"] > 0.5
    assert man.method["steps"] == 60 and man.recipe["epochs"] == 8


def test_readout_consistency(tiny_store):
    att = VectorAttributor(open_store(tiny_store), "cpu")
    X, y = load_digits_test()
    x, t = torch.from_numpy(X[:17]), torch.from_numpy(y[:17])
    sc = att.score(x, t)
    assert sc.examples.shape == (17, 120) and sc.sources.shape == (17, 5)
    # per-source responses were simulated as their own directions; by linearity they equal the sums
    torch.testing.assert_close(sc.sources, att.sum_by_source(sc.examples), rtol=1e-3, atol=1e-4)
    one = torch.cat([att.score(x[i : i + 1], t[i : i + 1]).examples for i in range(17)])
    # float32: GEMM blocking differs with batch shape, so agreement is to float32 rounding
    scale = sc.examples.abs().max().item()
    torch.testing.assert_close(one, sc.examples, rtol=1e-4, atol=1e-5 * scale)
    vals, idx = top_k(sc.sources, 3)
    assert (vals[:, :-1] >= vals[:, 1:]).all() and idx.shape == (17, 3)


def test_self_influence_is_positive(tiny_store):
    """A training example supports its own prediction: τ(z_b, b) > 0 mostly."""
    st = open_store(tiny_store)
    att = VectorAttributor(st, "cpu")
    sc = att.score(st.X[:40], st.y[:40], kind="logprob")
    assert (sc.examples.diagonal()[:40] > 0).float().mean() > 0.9


def test_ensemble_and_retention(tmp_path):
    cfg = load_config("tiny", overrides=[f'store.root="{tmp_path}"', "method.ensemble=2", "store.keep=2",
                                         "method.steps=5", "store.dtype=bfloat16"])
    for _ in range(3):
        build(cfg, progress=False)
    assert list_versions(tmp_path) == ["v000002", "v000003"]
    st = open_store(tmp_path)
    assert st.manifest.members == 2 and st.examples[1]["0.weight"].dtype == torch.bfloat16
    assert not torch.equal(st.params[0]["0.weight"], st.params[1]["0.weight"])


def test_tiny_preset_spectral_equals_the_step_by_step_reference():
    """The default (spectral) posthoc responses of the tiny preset against K
    damped steps of the reference solver: 1e-2 relative at rank 512 < p = 910,
    1e-9 at full rank (float64)."""
    from influence.mlp.propagate import Simulator
    from worker.pipeline import load_dataset
    from worker.train import train

    cfg = load_config("tiny")
    ds = load_dataset(cfg)
    X, y, src = (torch.from_numpy(a) for a in (ds.X, ds.y, ds.source))
    X = X.double()
    params = {k: v.double() for k, v in train(cfg.model, X.float(), y, cfg.train, 0).params.items()}
    out = {}
    for solver, rank in (("steps", 512), ("spectral", 512), ("spectral", 910)):
        m = cfg.method.model_copy(update={"solver": solver, "rank": rank})
        r = Simulator(m, cfg.model, cfg.train.weight_decay, X, y, src, len(ds.source_ids)).posthoc(params, seed=0)
        out[solver, rank] = torch.cat([r.examples, r.sources])
    ref = out["steps", 512]
    assert ((out["spectral", 512] - ref).norm() / ref.norm()).item() < 1e-2
    torch.testing.assert_close(out["spectral", 910], ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())
