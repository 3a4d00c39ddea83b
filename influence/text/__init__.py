"""The causal-LM engine every text kind (``gpt``, ``hf``, a kind of your own)
runs on, written once against the ``CausalLM`` protocol (``causal``): the
tangent rules LayerNorm and attention share (``rules``), gradients, Gauss-Newton
products and the forward-only readout (``lm_math``), the simulation of
per-document responses (``lm_simulate``), training blocks (``blocks``,
``corpus``), token pieces (``pieces``) and the resident store that answers
text queries (``attributor``).

Import the submodules directly; this package imports nothing heavy itself.
"""
