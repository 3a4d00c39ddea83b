"""Default LoRA targets fit every architecture; a wrong name lists the valid ones (issue 24 row 2)."""

from __future__ import annotations

import pytest

from influence.hf.model import with_layout, wrap
from influence.hf.spec import HFSpec, LoraSpec
from influence.hf.targets import TargetError, block_linear_names, lora_targets

from .conftest import tiny_base

WANT = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


@pytest.mark.parametrize("family", list(WANT))
def test_block_projections_are_found_and_the_head_is_not(family):
    base = tiny_base(family)
    names = block_linear_names(base)
    assert sorted(names) == sorted(WANT[family])
    head = [n for n, m in base.named_modules() if m is base.get_output_embeddings()][0]
    assert head.split(".")[-1] not in names


@pytest.mark.parametrize("family", list(WANT))
def test_default_lora_wraps_every_block_projection_and_the_spec_records_them(family):
    base = tiny_base(family)
    model = wrap(base, HFSpec(trained="lora", lora=LoraSpec(r=2), dtype="float64"))
    spec = with_layout(HFSpec(trained="lora", lora=LoraSpec(r=2)), model)
    assert sorted(spec.lora.target_modules) == sorted(WANT[family])
    wrapped = {n.split(".")[-4] for n in spec.names if n.endswith("lora_A.default.weight")}
    assert wrapped == set(WANT[family])
    # the recorded list rebuilds the same layout (what the service does when it loads the store)
    again = with_layout(spec, wrap(tiny_base(family), spec))
    assert again.names == spec.names and again.shapes == spec.shapes


def test_a_wrong_name_lists_the_valid_ones_and_the_set_syntax():
    with pytest.raises(TargetError) as e:
        lora_targets(tiny_base("llama"), ["c_attn"])
    msg = str(e.value)
    assert "['c_attn']" in msg and "q_proj" in msg and "down_proj" in msg
    assert "--set model.lora.target_modules=" in msg


def test_an_explicit_list_is_kept_in_order():
    assert lora_targets(tiny_base("llama"), ["v_proj", "q_proj"]) == ["v_proj", "q_proj"]
