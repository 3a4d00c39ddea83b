"""Tiny random-config Hugging Face causal LMs (no checkpoint files): GPT-2
(``Conv1D`` layers, tied head) and Llama (``nn.Linear``, RMSNorm, rotary,
grouped-query attention), in float64 unless a test says otherwise; Qwen2
(Llama-like with q/k/v biases) and GPT-NeoX (fused query_key_value, parallel
residual) for the default-target and new-user checks."""

from __future__ import annotations

import pytest
import torch

from influence.hf.loader import offline
from influence.hf.model import wrap
from influence.hf.spec import HFSpec, LoraSpec

V, CTX = 37, 16
LORA_TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"], "llama": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]}


def tiny_base(family: str, seed: int = 0, vocab: int = V, context: int = CTX):
    offline()
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=context, n_embd=12, n_layer=2, n_head=2, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        cfg._attn_implementation = "eager"
        return GPT2LMHeadModel(cfg)
    if family == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(vocab_size=vocab, hidden_size=12, intermediate_size=20, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
                          bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
        cfg._attn_implementation = "eager"
        return Qwen2ForCausalLM(cfg)
    if family == "gpt_neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=12, intermediate_size=20, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=context, rotary_pct=0.5,
                            bos_token_id=0, eos_token_id=0, hidden_dropout=0.0, attention_dropout=0.0)
        cfg._attn_implementation = "eager"
        return GPTNeoXForCausalLM(cfg)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=12, intermediate_size=20, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg)


def tiny(family: str, trained: str = "lora", seed: int = 0, dtype: str = "float64", r: int = 2, **kw):
    """A wrapped tiny model with non-zero LoRA B (so both factors matter) and its trained params."""
    spec = HFSpec(trained=trained, lora=LoraSpec(r=r, alpha=2.0 * r, target_modules=LORA_TARGETS[family]),
                  dtype=dtype, **kw)
    model = wrap(tiny_base(family, seed), spec, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model, model.trained()


@pytest.fixture(params=["gpt2", "llama"])
def family(request):
    return request.param


def save_tiny_checkpoint(out, docs: list[str], family: str = "gpt2", seed: int = 0):
    """A tiny base + byte-level BPE tokenizer saved with ``save_pretrained``: a local checkpoint directory."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(docs, vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    model = tiny_base(family, seed, vocab=len(tok), context=32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
