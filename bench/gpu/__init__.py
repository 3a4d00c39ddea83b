"""GPU: the suite a lent CUDA host runs, and its parts."""
