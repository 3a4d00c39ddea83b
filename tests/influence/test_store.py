"""Store format: round trip, atomic publish under concurrent readers,
corrupt or mismatched stores refused, retention."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from influence.errors import StoreError
from influence.mlp.model import MLPSpec, init_params
from influence.store import (
    Manifest,
    current_version,
    list_versions,
    load_version,
    open_store,
    publish,
    set_current,
)

SPEC = MLPSpec(widths=[4, 3, 2])


def _publish(root, seed=0, keep=3, dtype="float32", examples=True):
    torch.manual_seed(seed)
    params = init_params(SPEC, seed)
    n, S = 6, 2
    resp = lambda rows: {k: torch.randn(rows, *v.shape) for k, v in params.items()}  # noqa: E731
    man = Manifest(format_version=1, model=SPEC, recipe={"seed": seed}, method={"steps": 3},
                   data={"name": "t", "fingerprint": "x", "n": n, "dim": 4}, classes=["a", "b"],
                   source_ids=["s0", "s1"], example_source=[0, 1, 0, 1, 1, 0], members=1, dtype=dtype,
                   has_examples=True, has_sources=True)
    ex, src = resp(n), resp(S)
    training = (torch.randn(n, 4), torch.zeros(n))
    path = publish(root, man, [params], [ex] if examples else None, [src], training, keep=keep)
    return path, params, ex, src


def test_round_trip(tmp_path):
    path, params, ex, src = _publish(tmp_path)
    st = open_store(tmp_path)
    assert st.version == path.name == current_version(tmp_path)
    for k in params:
        torch.testing.assert_close(st.params[0][k], params[k])
        torch.testing.assert_close(st.examples[0][k], ex[k])
        torch.testing.assert_close(st.sources[0][k], src[k])
    assert st.X.shape == (6, 4) and st.manifest.source_ids == ["s0", "s1"]


def test_bf16_store_keeps_dtype(tmp_path):
    _, _, ex, _ = _publish(tmp_path, dtype="bfloat16")
    st = open_store(tmp_path)
    w = st.examples[0]["0.weight"]
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w.float(), ex["0.weight"], rtol=1e-2, atol=1e-2)


def test_corrupt_file_refused(tmp_path):
    path, *_ = _publish(tmp_path)
    f = path / "responses.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum mismatch"):
        open_store(tmp_path)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format_version=99), "store format 99"),
    (lambda m: m.update(model={"widths": [4, 5, 2]}), "has shape"),
    (lambda m: m.update(example_source=[0, 1, 0, 1, 1, 7]), "outside source_ids"),
    (lambda m: m.pop("classes"), "invalid manifest"),
])
def test_mismatched_manifest_refused(tmp_path, edit, match):
    path, *_ = _publish(tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match=match):
        load_version(path)


def test_missing_store_is_clear(tmp_path):
    with pytest.raises(StoreError, match="no store published yet"):
        open_store(tmp_path)
    with pytest.raises(StoreError, match="not found"):
        _publish(tmp_path)
        open_store(tmp_path, "v000042")


def test_retention_and_rollback(tmp_path):
    for s in range(5):
        _publish(tmp_path, seed=s, keep=2)
    assert list_versions(tmp_path) == ["v000004", "v000005"]
    set_current(tmp_path, "v000004")
    assert open_store(tmp_path).manifest.recipe == {"seed": 3}
    with pytest.raises(StoreError):
        set_current(tmp_path, "v000001")


def test_reader_never_sees_partial_store(tmp_path):
    """Readers loading CURRENT while a writer publishes (and prunes) see a
    complete, verified version every time."""
    _publish(tmp_path)
    stop, seen, errors = threading.Event(), set(), []

    def read():
        while not stop.is_set():
            try:
                st = open_store(tmp_path)
                assert st.manifest.recipe["seed"] == int(st.version[1:]) - 1
                seen.add(st.version)
            except Exception as e:  # any failure is a test failure
                errors.append(repr(e))

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for s in range(1, 12):
        _publish(tmp_path, seed=s, keep=3)
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]
    assert len(seen) >= 2


def test_quantized_examples_round_trip_and_refuse_a_mismatch(tmp_path):
    """``examples_quant``: rows stored as 3-bit codes come back within half a
    step of every group's scale, as float32 blocks of the layout; a manifest
    whose bits do not match the stored codes is refused."""
    import json

    from influence.mlp.model import MLPSpec
    from influence.quant import dequantize, quantize
    from influence.store import Manifest, StoreError, load_version, publish

    spec = MLPSpec(widths=[5, 4, 3])
    layout = spec.layout()
    g = torch.Generator().manual_seed(0)
    params = [{k: torch.randn(s, generator=g) for k, s in zip(layout.names, layout.shapes)}]
    U = torch.randn(6, layout.numel, generator=g)
    man = Manifest(format_version=3, model=spec, recipe={}, method={}, data={}, classes=["a", "b", "c"],
                   source_ids=["s0", "s1"], example_source=[0, 1, 0, 1, 0, 1], members=1, dtype="float32",
                   has_examples=True, has_sources=False, examples_quant={"bits": 3, "group": 8})
    path = publish(tmp_path / "st", man, params, [layout.unflatten(U)], None)
    st = load_version(path)
    got = layout.flatten(st.examples[0])
    torch.testing.assert_close(got, dequantize(quantize(U, 3, 8)), rtol=0, atol=0)
    assert (got - U).abs().max() <= U.abs().max() / 3 / 2 * 1.01
    mf = path / "manifest.json"
    bad = json.loads(mf.read_text())
    bad["examples_quant"]["bits"] = 4
    mf.write_text(json.dumps(bad))
    with pytest.raises(StoreError, match="examples_quant"):
        load_version(path)
