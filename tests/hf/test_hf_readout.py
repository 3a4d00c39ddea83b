"""The forward-only readout of Hugging Face causal LMs (``lm_math.jvp_scores``
through ``HFCausalLM``), on tiny GPT-2 and Llama models in float64: it equals
the gradient dot product and the two-point difference, batched equals one at
a time (queries of different lengths, right-padded), LoRA-subspace responses
read through the merged full model equal the LoRA-only numbers, and a
trained tied output layer enters through its own tangent."""

from __future__ import annotations

import pytest
import torch

from influence.hf.model import HFCausalLM
from influence.layout import ParamLayout
from influence.text.causal import pad_right
from influence.text.lm_math import difference_scores, gradient_scores, jvp_scores

from .conftest import CTX, V, tiny

# Llama's RMSNorm (and rotary tables) compute in float32 inside a float64 model: agreement ~1e-7
TOL = {"gpt2": 1e-9, "llama": 2e-6}
# two-point difference (h, tolerance): O(h²) truncation against O(eps/h) rounding, eps that of the
# model's float32 norms for Llama (so a large h there, on unit-norm responses)
DIFF = {"gpt2": (1e-6, 1e-6), "llama": (1e-3, 1e-3)}


def _queries(seed: int = 5, lengths=(9, 17, 5, 12)):
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, V, (n,), generator=gen).tolist() for n in lengths]
    return pad_right(seqs)


def _responses(params, R: int, seed: int = 9) -> torch.Tensor:
    p = ParamLayout.of(params).numel
    return torch.randn(R, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


PATTERNS = {"gpt2": ["transformer.h.1.*"], "llama": ["model.layers.1.*"]}  # the last block only


@pytest.mark.parametrize("trained", ["lora", "all", "patterns"])
def test_jvp_equals_gradient_and_difference(family, trained):
    model, params = tiny(family, trained, patterns=PATTERNS[family] if trained == "patterns" else [])
    if trained == "patterns":
        assert params and all(".layers.1." in k or ".h.1." in k for k in params)
    x, mask = _queries()
    U = _responses(params, 6)
    fast = jvp_scores(model, params, U, x, mask)
    ref = gradient_scores(model, params, U, x, mask)
    full = jvp_scores(model, params, U, x, mask, head=False)
    h, tol = DIFF[family]
    Un = U / U.norm(dim=1, keepdim=True)
    diff = difference_scores(model, params, Un, x, mask, h=h)
    assert fast.shape == (4, 6)
    assert _rel(fast, ref) < TOL[family]
    assert _rel(full, ref) < TOL[family]
    assert _rel(diff, gradient_scores(model, params, Un, x, mask)) < tol


def test_batched_equals_one_at_a_time(family):
    model, params = tiny(family)
    x, mask = _queries()
    U = _responses(params, 5)
    both = jvp_scores(model, params, U, x, mask)
    for i in range(x.shape[0]):
        n = int(mask[i].sum()) + 1
        one = jvp_scores(model, params, U, x[i : i + 1, :n], mask[i : i + 1, : n - 1])
        assert _rel(one[0], both[i]) < (1e-12 if family == "gpt2" else 1e-5)  # Llama: float32 norms


def _lora_to_full(model: HFCausalLM, lora_u: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Chain rule of W_eff = W + s·B A (transposed for Conv1D): the tangent of each adapted base weight."""
    out = {}
    for name, mod in model.lm.get_base_model().named_modules():
        if not hasattr(mod, "lora_A") or "default" not in mod.lora_A:
            continue
        pre = f"lm.base_model.model.{name}."
        A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight  # (r, in), (out, r)
        dA, dB = lora_u[pre + "lora_A.default.weight"], lora_u[pre + "lora_B.default.weight"]  # (K, ...)
        dW = mod.scaling["default"] * (dB @ A + B @ dA)  # (K, out, in)
        out[f"lm.{name}.weight"] = dW.transpose(1, 2) if mod.fan_in_fan_out else dW
    return out


def test_lora_subspace_through_full_model(family):
    """Responses in LoRA space, read out through the merged model with the
    adapted base weights as inputs, give the LoRA-only numbers."""
    model, params = tiny(family)
    x, mask = _queries()
    U = _responses(params, 4)
    lora = jvp_scores(model, params, U, x, mask)
    twin, twin_params = tiny(family)  # the same seed: the same model, merged below
    assert all(torch.equal(twin_params[k], params[k]) for k in params)
    merged = HFCausalLM(twin.lm.merge_and_unload(), CTX).eval()
    full_u = _lora_to_full(model, ParamLayout.of(params).unflatten(U))
    full_p = {k: v.detach() for k, v in merged.named_parameters() if k in full_u}
    assert len(full_p) == len(full_u) > 0
    Uf = ParamLayout.of(full_p).flatten(full_u)
    through_full = jvp_scores(merged, full_p, Uf, x, mask)
    assert _rel(through_full, lora) < TOL[family]


def test_trained_tied_head_enters_directly():
    """GPT-2 with everything trained: the tied embedding's tangent moves both
    the input embedding and the output layer; only a tangent on it is non-zero."""
    model, params = tiny("gpt2", "all")
    x, mask = _queries()
    layout = ParamLayout.of(params)
    u = {k: torch.zeros(1, *v.shape, dtype=v.dtype) for k, v in params.items()}
    u["lm.transformer.wte.weight"] = torch.randn(1, *params["lm.transformer.wte.weight"].shape, dtype=torch.float64)
    U = layout.flatten(u)
    assert _rel(jvp_scores(model, params, U, x, mask), gradient_scores(model, params, U, x, mask)) < 1e-9


def test_bfloat16_model_reads_out_close_to_float32(family):
    """A bfloat16 copy of the same model (primal and tangents in bfloat16, the
    head's softmax in float32): the same scores to bfloat16's precision, which on
    this tiny random model is about 10% of the largest score (8 bits of mantissa
    through every layer); the ranking is kept."""
    m32, p32 = tiny(family, dtype="float32")
    m16, _ = tiny(family, dtype="bfloat16")
    p16 = {k: v.to(torch.bfloat16) for k, v in p32.items()}
    x, mask = _queries()
    U = _responses(p32, 4).float()
    ref = jvp_scores(m32, p32, U, x, mask)
    got = jvp_scores(m16, p16, U, x, mask).float()
    assert _rel(got, ref) < 0.15
    assert torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1] > 0.98


def test_gpt2_lora_manual_tangents_equal_torch_func():
    """The hand-derived GPT-2 + LoRA tangent rules (``gpt2_tangent``) against
    ``torch.func.jvp`` through the peft model, float64, with padding."""
    model, params = tiny("gpt2")
    assert model.manual_tangents  # GPT-2 with LoRA on its Conv1D layers: the fast rules apply
    x, mask = _queries()
    U = _responses(params, 7)
    fast = jvp_scores(model, params, U, x, mask, chunk=3)
    ref = jvp_scores(model, params, U, x, mask, impl="func")
    assert _rel(fast, ref) < 1e-10
    assert _rel(fast, gradient_scores(model, params, U, x, mask)) < 1e-10
    lp_fast = jvp_scores(model, params, U, x, mask, logprobs=True)[1]
    lp_ref = jvp_scores(model, params, U, x, mask, impl="func", logprobs=True)[1]
    assert torch.allclose(lp_fast, lp_ref, rtol=1e-12, atol=1e-12)


def test_manual_tangents_only_where_they_apply(family):
    for trained in ("all", "lora"):
        model, _ = tiny(family, trained)
        assert model.manual_tangents == (family == "gpt2" and trained == "lora")
