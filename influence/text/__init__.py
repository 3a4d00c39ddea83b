"""The language-model case (``docs/lm-protocol.md``): the Brown corpus with its
real publishers (:mod:`.brown`, :mod:`.publishers`), the word tokenizer
(:mod:`.tokenizer`), split / training blocks / query windows (:mod:`.corpus`),
JSONL user text (:mod:`.jsonl`) and the protocol's GPT (:mod:`.gpt`).

Import the submodules directly; this package imports nothing heavy itself.
"""
