"""``python -m bench.gpu.check``: the readout with the store resident on a
CUDA GPU, as one unattended script for a GPU host.

Checks (exit status 1 if any fails):

1. the store is resident on the device (every parameter and response block);
2. the CUDA readout equals the CPU readout within tolerance (360 digits test
   queries × all example and source responses; float32 store, and a
   bfloat16 store against its own CPU readout);
3. the service's padded blocks are batch-invariant on the device too: a
   query's scores are bit-identical whatever it is batched with
   (``influence.blocks.readout_rows``, the property batching on/off relies on).

Then measures, with CUDA events: readout pairs/s against batch size and store
size (the digits responses repeated up to 100x), next to the device's GEMM
``(B, p) @ (p, R)`` for the same shapes (fraction of it), the service path
(``readout_rows`` in blocks of 64 and 256), and peak memory.

Writes ``bench/results/gpu_check.json`` and appends one JSON line to
``bench/results/gpu_check.log`` (``--out``, ``--append``). ``--quick`` for a
short run; ``--device cpu`` dry-runs the same code on a CPU. Runs in about
1-3 minutes on one GPU (plus the digits store build, minutes, if
``bench/.cache/digits-k20`` is missing; pass ``--store`` to use another).

    python -m bench.gpu.check                # on the GPU host, from the repository root
    python -m pytest -m gpu                  # the CUDA tests
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

import influence  # noqa: F401
from bench.harness.common import RESULTS, digits_store, machine
from bench.harness.timing import timed
from influence.datasets.vectors import load_digits_test
from influence.mlp.attributor import VectorAttributor
from influence.mlp.readout import linear_stack_scores
from influence.store import open_store


def check_resident(att: VectorAttributor, dev: torch.device) -> dict:
    tensors = [v for p in att.params for v in p.values()]
    for blocks in (att.rows or []) + (att.source_rows or []):
        for w, c in blocks:
            tensors += [w, c]
    off = sum(1 for t in tensors if t.device.type != dev.type)
    return {"name": "store resident on device", "ok": off == 0, "tensors": len(tensors), "off_device": off,
            "bytes": sum(t.numel() * t.element_size() for t in tensors)}


def check_equal(st, dev: torch.device, Xq, yq, dtype=None, rtol: float = 1e-3, atol_rel: float = 1e-4) -> dict:
    cpu, gpu = VectorAttributor(st, "cpu", resident_dtype=dtype), VectorAttributor(st, dev, resident_dtype=dtype)
    a, b = cpu.score(Xq, yq), gpu.score(Xq, yq)
    out = {"name": f"readout on {dev.type} equals CPU ({dtype or 'store dtype'})", "ok": True}
    for what in ("examples", "sources"):
        ref, got = getattr(a, what), getattr(b, what).cpu()
        scale = ref.abs().max().item()
        err = (got - ref).abs().max().item()
        out[f"{what}_max_abs_err_rel_to_max"] = err / scale
        try:
            torch.testing.assert_close(got, ref, rtol=rtol, atol=atol_rel * scale)
        except AssertionError as e:
            out["ok"], out[f"{what}_error"] = False, str(e)[:300]
    out["pred_equal"] = bool(torch.equal(a.pred, b.pred.cpu()))
    out["ok"] = out["ok"] and out["pred_equal"]
    return out


def check_batch_invariance(att: VectorAttributor, Xq, block: int) -> dict:
    from influence.blocks import batch_invariant, readout_rows

    y = torch.full((len(Xq),), -1)
    together = readout_rows(att, Xq[:100], y[:100], "margin", True, block)
    bad = 0
    for i in range(0, 100, 7):
        alone = readout_rows(att, Xq[i:i + 1], y[i:i + 1], "margin", True, block)
        bad += sum(not torch.equal(a[0], t[i]) for a, t in zip(alone, together, strict=True) if a is not None)
    probe = batch_invariant(att, block)  # what the service checks on every store load
    return {"name": f"padded blocks of {block} are batch-invariant (bit for bit)", "ok": bad == 0 and probe,
            "mismatches": bad, "service_probe": probe}


def sized(layers, R: int):
    n = layers[0][0].shape[0]
    idx = torch.arange(R, device=layers[0][0].device) % n
    return [(w[idx].contiguous(), c[idx].contiguous()) for w, c in layers]


def throughput(att: VectorAttributor, dev: torch.device, batches, mults, log) -> list[dict]:
    spec, params = att.spec, att.params[0]
    p = spec.layout().numel
    rows = []
    base = att.rows[0]
    for m in mults:
        R = base[0][0].shape[0] * m
        try:
            lay = sized(base, R)
            U = torch.cat([torch.cat([w.reshape(R, -1), c.reshape(R, -1)], 1) for w, c in lay], 1).float()
        except torch.OutOfMemoryError:
            log(f"R={R}: out of memory, skipped")
            break
        for B in batches:
            x = torch.rand(B, spec.in_dim, device=dev) * 16
            y = torch.randint(0, spec.n_classes, (B,), device=dev)
            G = torch.randn(B, p, device=dev)
            try:
                t = timed(lambda lay=lay, x=x, y=y: linear_stack_scores(params, spec, lay, x, y), dev)
                tg = timed(lambda G=G, U=U: G @ U.T, dev)
            except torch.OutOfMemoryError:
                log(f"R={R} B={B}: out of memory, skipped")
                torch.cuda.empty_cache()
                continue
            rows.append({"responses": R, "batch": B, "readout_s": t, "gemm_s": tg, "pairs_per_s": B * R / t,
                         "gemm_pairs_per_s": B * R / tg, "fraction_of_gemm": tg / t,
                         "readout_tflops": 2 * B * R * p / t / 1e12})
            log(f"R={R:7d} B={B:5d}: {B * R / t:.3g} pairs/s, {tg / t:.2f} of GEMM")
        del lay, U
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def service_path(att: VectorAttributor, dev: torch.device, Xq, blocks) -> list[dict]:
    from influence.blocks import readout_rows

    y = torch.full((len(Xq),), -1)
    out = []
    for block in blocks:
        for examples in (False, True):
            t = timed(lambda b=block, e=examples: readout_rows(att, Xq, y, "margin", e, b), dev)
            out.append({"block": block, "examples": examples, "queries": len(Xq), "seconds": t,
                        "queries_per_s": len(Xq) / t})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--store", type=Path, help="store root (default: the digits store, built if missing)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    ap.add_argument("--append", type=Path, default=RESULTS / "gpu_check.log")
    a = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        log("no CUDA device: nothing to check (use --device cpu for a dry run)")
        return 2
    dev = torch.device(a.device)
    res = {"command": "python -m bench.gpu.check " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "device": str(dev), "checks": [], "ok": False}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        res["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}",
                      "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
        torch.cuda.reset_peak_memory_stats(dev)
    t_start = time.perf_counter()
    try:
        st = open_store(a.store or digits_store())
        res["store"] = {"root": str(a.store or digits_store()), "version": st.version,
                        "examples": len(st.manifest.example_source), "sources": len(st.manifest.source_ids)}
        Xq, yq = (torch.from_numpy(v) for v in load_digits_test())
        Xq, yq = Xq.float(), yq.long()
        att = VectorAttributor(st, dev)
        res["checks"].append(check_resident(att, dev))
        res["checks"].append(check_equal(st, dev, Xq, yq))
        res["checks"].append(check_equal(st, dev, Xq, yq, torch.bfloat16))
        for block in (16, 64):
            res["checks"].append(check_batch_invariance(att, Xq, block))
        for c in res["checks"]:
            log(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}")
        batches = (16, 256) if a.quick else (1, 16, 64, 256, 1024, 4096)
        mults = (1,) if a.quick else (1, 10, 100)
        res["throughput"] = throughput(att, dev, batches, mults, log)
        res["service_path"] = service_path(att, dev, Xq, (64,) if a.quick else (16, 64, 256))
        if dev.type == "cuda":
            res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        res["ok"] = all(c["ok"] for c in res["checks"])
    except Exception as e:  # noqa: BLE001 - recorded in the result file, then reported as a failure
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-3000:]
        log(res["traceback"])
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    with open(a.append, "a") as f:
        f.write(json.dumps({k: v for k, v in res.items() if k != "traceback"}) + "\n")
    log(f"{'ALL OK' if res['ok'] else 'FAILED'} in {res['seconds']} s; wrote {a.out}, appended to {a.append}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
