"""Digits quality: LDS / LOO of ours, TRAK and the gradient dot product on the MLP, and the precompute cost."""
