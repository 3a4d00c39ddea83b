"""Response averaging over training iterates (``method.iterates``): the kept
epoch ends are the iterates a shorter run ends at, one iterate is exactly
today's simulation, the average is the mean of separate simulations (both
solvers, float64), the worker's store holds that mean, and settings that
cannot work are refused with the field named."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from influence.mlp.propagate import Simulator
from influence.simulate.settings import MethodConfig
from influence.store import open_store
from worker.config import ConfigError, load_config
from worker.pipeline import build, load_dataset
from worker.train import train


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    ds = load_dataset(cfg)
    X, y, src = (torch.from_numpy(a) for a in (ds.X, ds.y, ds.source))
    return cfg, X, y, src, len(ds.source_ids)


def test_kept_epoch_ends_are_the_shorter_runs_final_models(tiny):
    cfg, X, y, _, _ = tiny
    t = train(cfg.model, X, y, cfg.train, seed=3, keep_epochs=[2, 5])
    assert len(t.iterates) == 2 and t.averaged()[-1] is t.params
    for got, epochs in zip(t.iterates, (2, 5), strict=True):
        short = train(cfg.model, X, y, cfg.train.model_copy(update={"epochs": epochs}), seed=3)
        for k, v in short.params.items():
            assert torch.equal(got[k], v), (epochs, k)
    assert not torch.equal(t.iterates[1]["0.weight"], t.params["0.weight"])


@pytest.mark.parametrize("solver", ["steps", "spectral"])
def test_mean_over_iterates_equals_the_mean_of_separate_simulations(tiny, solver):
    cfg, X, y, src, S = tiny
    X = X.double()
    t = train(cfg.model, X.float(), y, cfg.train, seed=0, keep_epochs=[4, 6])
    its = [{k: v.double() for k, v in p.items()} for p in t.averaged()]
    m = cfg.method.model_copy(update={"solver": solver, "steps": 20, "iterates": 3, "iterate_every": 2})
    sim = Simulator(m, cfg.model, cfg.train.weight_decay, X, y, src, S)
    single = [sim.propagate(p, seed=0) for p in its]
    mean = sim.propagate_mean(its, seed=0)
    torch.testing.assert_close(mean, sum(single) / 3, rtol=1e-12, atol=1e-14)
    # the average is a different answer from the final model's alone, and one iterate is exactly that
    assert (mean - single[-1]).norm() > 1e-3 * single[-1].norm()
    assert torch.equal(sim.propagate_mean(its[-1:], seed=0), single[-1])
    r = sim.posthoc(its, seed=0)
    assert torch.equal(torch.cat([r.examples, r.sources]), mean)
    if solver == "spectral":
        assert r.diagnostics["iterates"] == 3


def test_worker_store_holds_the_average(tmp_path, tiny):
    cfg0, X, y, src, S = tiny
    over = [f'store.root="{tmp_path}"', "method.iterates=3", "method.iterate_every=2"]
    cfg = load_config("tiny", overrides=over)
    build(cfg, progress=False)
    st = open_store(tmp_path)
    assert st.manifest.method["iterates"] == 3 and st.manifest.extra["members"][0]["iterates"] == 3
    t = train(cfg.model, X, y, cfg.train, seed=cfg.train.seed, keep_epochs=[4, 6])
    for k, v in t.params.items():
        assert torch.equal(st.params[0][k], v), k
    sim = Simulator(cfg.method, cfg.model, cfg.train.weight_decay, X, y, src, S)
    want = sum(sim.posthoc(p, seed=cfg.train.seed).sources for p in t.averaged()) / 3
    got = torch.cat([v.reshape(S, -1) for v in st.sources[0].values()], 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize(("over", "needle"), [
    (["method.iterates=3", "method.iterate_every=4"], "method.iterates"),  # tiny trains 8 epochs: 8-8 = 0
    (["method.iterates=2", "method.schedule=alongside"], "schedule=posthoc"),
    (["method.iterates=2", "method.mode=two"], "mode=single"),
    (["method.iterate_every=0"], "iterate_every"),
    (["method.iterates=65"], "iterates"),
])
def test_unworkable_settings_are_refused_naming_the_field(over, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("tiny", overrides=over)


def test_iterate_epochs():
    assert MethodConfig(iterates=8, iterate_every=4).iterate_epochs(40) == [12, 16, 20, 24, 28, 32, 36, 40]
    assert MethodConfig().iterate_epochs(40) == [40]
    with pytest.raises(ValueError, match="epoch 0"):
        MethodConfig(iterates=11, iterate_every=4).iterate_epochs(40)
    with pytest.raises(ValidationError):
        MethodConfig(iterates=2, schedule="alongside")


def test_text_store_refuses_iterates():
    with pytest.raises(ConfigError, match="iterates is not built for kind .gpt."):
        load_config("brown", overrides=["method.iterates=2"])


def test_digits_preset_says_how_to_leave_iterate_averaging():
    """The digits preset averages 8 iterates; switching it to another schedule
    names the setting to change instead of failing obscurely."""
    with pytest.raises(ConfigError, match="set method.iterates=1"):
        load_config("digits", overrides=["method.schedule=alongside"])
    assert load_config("digits", overrides=["method.schedule=alongside", "method.iterates=1"]).method.iterates == 1


def test_averaged_propagation_resumes_from_its_checkpoints(tmp_path, tiny):
    """Step-by-step solver, one checkpoint file per iterate: a rerun over the
    files a killed run left (iterate 0 finished, iterate 1 midway) gives the
    same mean, bit for bit."""
    from influence.mlp.propagate import StepCheckpoint

    cfg, X, y, src, S = tiny
    t = train(cfg.model, X, y, cfg.train, seed=0, keep_epochs=[6])
    m = cfg.method.model_copy(update={"solver": "steps", "steps": 20, "iterates": 2, "iterate_every": 2})
    sim = Simulator(m, cfg.model, cfg.train.weight_decay, X, y, src, S)
    ref = sim.propagate_mean(t.averaged(), seed=0)
    cks = [StepCheckpoint(tmp_path / f"it{c}.pt", 5) for c in range(2)]
    sim.propagate(t.averaged()[0], 0, checkpoint=cks[0])  # iterate 0 done (its state at step 20 saved)

    class Killed(Exception):
        pass

    def stop(_n):
        if (tmp_path / "it1.pt").exists() and torch.load(tmp_path / "it1.pt")["step"] == 10:
            raise Killed

    with pytest.raises(Killed):
        sim.propagate(t.averaged()[1], 0, checkpoint=cks[1], progress=type("P", (), {"update": staticmethod(stop)}))
    assert torch.load(tmp_path / "it0.pt")["step"] == 20 and torch.load(tmp_path / "it1.pt")["step"] == 10
    steps_run = []
    bar = type("P", (), {"update": staticmethod(lambda n: steps_run.append(n))})
    assert torch.equal(sim.propagate_mean(t.averaged(), seed=0, checkpoints=cks, progress=bar), ref)
    assert steps_run.count(1) == 10 and sum(steps_run) == 40  # only iterate 1's last 10 steps ran again
