"""Benchmarks: a folder per family over one harness. Run from the repository root, ``python -m
bench.<family>.<module>`` (``EXTRAS=bench scripts/setup`` first); BENCHMARKS.md quotes each command.

- ``harness/``: what every family shares: ``common`` (paths, the machine, result files, cache keys),
  ``protocol`` + ``truth`` (the text benchmarks' subset protocol and their retraining ground truth:
  plan, claim, resume, status, load), ``metrics`` (LDS, LOO), ``trak`` (traker on given gradients),
  ``service`` (the service under test as a process), ``timing``, ``report`` (BENCHMARKS.md sections,
  tables, figures).
- ``digits/``: quality (LDS / LOO) and precompute cost on the MLP; ``sources/``: publisher-level
  quality (digits publishers, Brown genres); ``lm/``: the Brown GPT; ``ft/``: the fine-tuned Hugging
  Face model (brown-ft); ``serving/``: readout speed, the service under load, reliability, the hostile
  suite; ``gpu/``: the suite a lent GPU host runs (``python -m bench.gpu_suite``, as
  ``python -m bench.hostile``, keeps its name at the root).

Measuring and report writing stay apart: a measuring module writes ``bench/results/<name>.json`` and
its family's report module (``*report*.py``) renders BENCHMARKS.md and the figures from that file
alone. A new benchmark is one measuring file (its protocol and ground truth from the harness where it
is a retraining benchmark) and a render function in its family's report module.
"""
