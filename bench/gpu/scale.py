"""The GPU suite's scale probe: the forward-only readout of a Hugging Face
GPT-2-small configuration (``transformers.GPT2Config()`` defaults: d 768, 12
layers, 12 heads, vocabulary 50,257; 124.4M parameters, random weights,
eager attention), queries of ``T = 64`` tokens, ``R`` random response rows
(15, 64, 312: the genre, ~64 and the 312 publisher levels), trained
subspace ``full`` (every parameter) or ``lora`` (r = 8 on ``c_attn``,
``c_proj``, ``c_fc`` through ``influence.hf.model.wrap`` /
``influence.hf.spec.HFSpec``), read out by ``influence.text.lm_math.
jvp_scores``: on a GPU the model and the tangents in bfloat16 (a Hugging Face
kind has no hand-derived tangent rules, so its tangents run in the model's
dtype), on a CPU dry run float32 and a tiny configuration.

Counted (stated in the results' ``formulas``):

- forward flops over the ``T`` tokens of one query:
  ``F = L·(24·T·d² + 4·T²·d) + 2·T·d·V`` (per layer the q/k/v, projection
  and two MLP products, 12·d² weights, and QKᵀ, AV over the full T × T; the
  output layer);
- tangent flops per query ``2·F·R`` (every product twice along a tangent:
  ẋW and xẆ); ``tflops = 2·F·R / (seconds per query) / 1e12``;
  ``peak_fraction = tflops / peak`` (``PEAK_TFLOPS`` by device name, dense
  bfloat16; a CPU: a float32 GEMM measured here);
- TRAK's projected per-query cost at ``k = 4096``: a backward pass
  (``3·F``), the projection ``2·p·k`` and the scores ``2·k·R``; its time
  projected as the measured backward pass plus the rest at the peak rate.

Beside: one backward pass per query (``lm_math.query_grads``, a
``torch.func`` gradient per query, batch 8), measured.
"""

from __future__ import annotations

import torch

from bench.harness.timing import timed

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0,
               "A10G": 70.0, "L4": 121.0, "RTX 4090": 165.0}
"""Dense bfloat16 tensor-core peak (TFLOP/s, no sparsity) by a substring of the device name."""
R_VALUES, BATCH, BACKWARD_BATCH, CONTEXT, TRAK_K = (15, 64, 312), 32, 8, 64, 4096
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]


def peak_tflops(dev: torch.device) -> tuple[float, str]:
    """``(dense peak TFLOP/s, where it comes from)``: the table for a known GPU,
    else a square GEMM measured on the device (float32 on a CPU, bfloat16 on a GPU)."""
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, v in PEAK_TFLOPS.items():
            if key in name:
                return v, f"table: {key} dense bfloat16"
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = 4096 if dev.type == "cuda" else 512
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    s = timed(lambda: a @ b, dev, min_s=0.2)
    return 2 * n**3 / s / 1e12, f"measured: {n}x{n} {str(dt).removeprefix('torch.')} GEMM"


def forward_flops(d: int, layers: int, T: int, vocab: int) -> int:
    """``F``: one forward pass over ``T`` tokens (see the module doc)."""
    return layers * (24 * T * d * d + 4 * T * T * d) + 2 * T * d * vocab


def gpt2_config(small: bool):
    from transformers import GPT2Config

    kw = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg = GPT2Config(**kw) if not small else GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=512,
                                                        n_positions=CONTEXT + 1, **kw)
    cfg._attn_implementation = "eager"
    return cfg


def model_for(trained: str, small: bool, dev: torch.device, dtype: str):
    """``(wrapped model on dev, trained params)`` with random weights (seed 0)."""
    from transformers import GPT2LMHeadModel

    from influence.hf.loader import offline
    from influence.hf.model import wrap
    from influence.hf.spec import HFSpec, LoraSpec

    offline()
    torch.manual_seed(0)
    base = GPT2LMHeadModel(gpt2_config(small))
    spec = HFSpec(trained="all" if trained == "full" else "lora",
                  lora=LoraSpec(r=8, alpha=16.0, target_modules=LORA_TARGETS), dtype=dtype)
    model = wrap(base, spec, seed=0).to(dev)
    return model, model.trained()


def _resident_rows(p: int, R: int, dev: torch.device, elem: int) -> int:
    """Response rows held at once: all ``R`` unless they would take more than
    a third of the free device memory (the full model's 312 rows: 78 GB in
    bfloat16); the rest is read out in further calls over the same rows."""
    if dev.type != "cuda":
        return R
    free, _ = torch.cuda.mem_get_info(dev)
    return max(1, min(R, int(free / 3 / (p * elem))))


def probe(trained: str, small: bool, dev: torch.device, peak: float, emit, log, r_values=R_VALUES,
          batch: int = BATCH) -> None:
    """Measure every ``R`` for one trained subspace; ``emit`` one record each."""
    from influence.text.lm_math import jvp_scores, query_grads

    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    model, params = model_for(trained, small, dev, dtype)
    cfg = gpt2_config(small)
    n_all = sum(v.numel() for v in model.parameters())
    p = sum(v.numel() for v in params.values())
    F = forward_flops(cfg.n_embd, cfg.n_layer, CONTEXT, cfg.vocab_size)
    gen = torch.Generator(device=dev).manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (batch, CONTEXT + 1), device=dev, generator=gen)
    tdt = next(iter(params.values())).dtype
    xb = x[:BACKWARD_BATCH]
    t_back = timed(lambda: query_grads(model, params, xb), dev, min_s=0.2) / xb.shape[0]
    for R in r_values:
        rows = _resident_rows(p, R, dev, torch.finfo(tdt).bits // 8)
        calls = [rows] * (R // rows) + ([R % rows] if R % rows else [])
        U = torch.randn(rows, p, device=dev, dtype=tdt, generator=gen).mul_(1e-3)

        def readout(U=U, calls=calls):
            for r in calls:
                jvp_scores(model, params, U[:r], x)

        s = timed(readout, dev, min_s=0.3, max_reps=20) / batch
        tflops = 2 * F * R / s / 1e12
        trak = 3 * F + 2 * p * TRAK_K + 2 * TRAK_K * R
        rec = {"model": "gpt2-small" if not small else "gpt2-tiny", "trained": trained, "R": R, "batch": batch,
               "ms_per_query": s * 1e3, "tflops": tflops, "peak_fraction": tflops / peak,
               "tangent_dtype": dtype, "params": n_all, "trained_params": p, "tokens": CONTEXT,
               "flops_per_query": 2 * F * R, "resident_rows": rows, "calls_per_batch": len(calls),
               "backward_ms_per_query": t_back * 1e3, "backward_batch": BACKWARD_BATCH,
               "trak_k": TRAK_K, "trak_flops_per_query": trak,
               "trak_ms_per_query_projected": (t_back + (trak - 3 * F) / (peak * 1e12)) * 1e3}
        emit("scale_probe", rec)
        log(f"scale probe {trained} R={R}: {s * 1e3:.2f} ms/query, {tflops:.1f} TFLOP/s "
            f"({tflops / peak:.0%} of peak), backward {t_back * 1e3:.2f} ms/query")
        del U
        if dev.type == "cuda":
            torch.cuda.empty_cache()


FORMULAS = {
    "forward_flops": "F = L*(24*T*d^2 + 4*T^2*d) + 2*T*d*V",
    "tflops": "2*F*R / (seconds per query) / 1e12",
    "peak_fraction": "tflops / peak (dense bfloat16 by device name; CPU: a measured float32 GEMM)",
    "trak_flops_per_query": "3*F (backward) + 2*p*k (projection) + 2*k*R (scores), k = 4096",
    "trak_ms_per_query_projected": "measured backward ms + (2*p*k + 2*k*R) at the peak rate",
}


def run(dev: torch.device, small: bool, emit, log) -> dict:
    """Both trained subspaces; returns the part's info (peak, formulas)."""
    peak, source = peak_tflops(dev)
    info = {"peak_tflops": peak, "peak_source": source, "formulas": FORMULAS, "context": CONTEXT}
    emit("info", info)
    r_values = R_VALUES if not small else (3, 8)
    batch = BATCH if not small else 4
    for trained in ("full", "lora"):
        probe(trained, small, dev, peak, emit, log, r_values, batch)
    return info

