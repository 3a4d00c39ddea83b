"""Training-time simulation settings and the spectral machinery every model
kind's simulator shares (``settings``: ``MethodConfig``; ``spectral``: the
Nyström / low-rank filters). The MLP's step-by-step propagation and curvature
products are its kind's own (``influence.mlp.propagate``, ``.curvature``), the
causal LMs' are ``influence.text.lm_simulate``. Free of the worker's job
logic, the service and any I/O."""
