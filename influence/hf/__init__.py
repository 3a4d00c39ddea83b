"""Hugging Face causal language models (the ``hf`` model kind): loading from
local directories only, LoRA / named / full trained subspaces, and the
fine-tuning benchmark's data (``docs/ft-protocol.md`` in the team's shared
folder). The math (gradients, curvature, forward readout) is the text LM's
(``influence.text.lm_math``), through the ``CausalLM`` interface."""
