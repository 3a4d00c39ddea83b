"""The ``mlp`` model kind: a classifier on feature vectors. Its spec and
initialisation (``model``), the hand-derived linear-stack forward, readout
and curvature products (``readout``, ``curvature``), the step-by-step
simulator (``propagate``) with iterate averaging (``iterates``), the
resident store that answers vector queries (``attributor``) and its
registry entry (``kind``)."""
