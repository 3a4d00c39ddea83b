"""The ``gpt`` model kind: the protocol GPT (``model``), its hand-derived
batched tangent rules (``tangent``, built on the shared rules of
``influence.text.rules``), its word-level tokenizer (``tokenizer``) and its
registry entry (``kind``). The causal-LM engine it runs on is
``influence.text``."""
