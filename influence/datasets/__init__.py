"""The training data, out of the model kinds: built-in sets (``digits``
feature vectors, ``vectors``; the Brown corpus with its real publishers,
``brown`` / ``publishers``; the fine-tuning benchmark's openings,
``brown_ft``) and users' files (``vectors`` for npz / csv / parquet feature
tables, ``jsonl`` / ``documents`` for text corpora). Each yields examples
(or documents), their sources and a held-out query sample, which the worker
publishes as a store asset (``influence.heldout``)."""

BUILT_IN = {"digits": "vector", "brown": "text", "brown-ft": "text"}  # data.name -> the query form it trains
