"""The flat parameter layout shared by worker, store and readout.

Parameters are handled as an ordered dict ``name -> tensor`` (the names of
``nn.Module.named_parameters``, or of the trained subset) and, for
responses, as flat vectors of length ``p`` laid out in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamLayout:
    """Order, shapes and offsets of the parameters inside a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, params: dict[str, torch.Tensor]) -> ParamLayout:
        return cls(tuple(params), tuple(tuple(v.shape) for v in params.values()))

    @property
    def sizes(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """dict of ``(*batch, *shape)`` tensors -> ``(*batch, p)``."""
        first = params[self.names[0]]
        batch = first.shape[: first.dim() - len(self.shapes[0])]
        return torch.cat([params[n].reshape(*batch, -1) for n in self.names], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(*batch, p)`` -> dict of ``(*batch, *shape)`` views."""
        parts = torch.split(flat, self.sizes, dim=-1)
        batch = flat.shape[:-1]
        return {n: t.reshape(*batch, *s) for n, s, t in zip(self.names, self.shapes, parts)}
