"""Group-wise symmetric integer quantisation of response rows (int8, int4).

A matrix ``x (r, p)`` is cut along ``p`` into groups of ``group``
consecutive entries (the last one zero-padded); each (row, group) gets one
bfloat16 scale ``s = max|x| / qmax`` (``qmax`` = 127 for 8 bits, 7 for 4)
and its entries are stored as ``round(x / s)`` in ``[−qmax, qmax]``. 4-bit
codes are packed two per byte (low nibble first, offset by 8). So
``|dequantize(quantize(x)) − x| ≤ s / 2`` entrywise (``s`` is rounded up to
bfloat16, so no entry is clipped), and the bytes are ``r·p·bits/8 + r·⌈p/group⌉·2``.

Why group-wise: the rows mix parameter tensors whose scales differ by
orders of magnitude (embeddings, LayerNorm gains, attention); one scale
per row would spend the code range on the largest block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

QMAX = {8: 127, 4: 7}


@dataclass
class QTensor:
    """``codes``: int8 ``(r, P)`` for 8 bits, uint8 ``(r, P/2)`` packed for 4
    bits (``P`` = ``p`` padded to a multiple of ``group``); ``scale``
    bfloat16 ``(r, P/group)``; ``shape = (r, p)``."""

    codes: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, int]
    bits: int
    group: int

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scale.numel() * self.scale.element_size()


def quantize(x: torch.Tensor, bits: int = 8, group: int = 128) -> QTensor:
    """``x (r, p)`` float → :class:`QTensor`."""
    if bits not in QMAX:
        raise ValueError(f"bits: {bits} is not one of {sorted(QMAX)}")
    if x.ndim != 2 or group < 1 or (bits == 4 and group % 2):
        raise ValueError(f"quantize: needs a 2-d tensor and a positive (for 4 bits even) group, got {tuple(x.shape)}, "
                         f"group {group}")
    r, p = x.shape
    P = math.ceil(p / group) * group
    xg = torch.nn.functional.pad(x.float(), (0, P - p)).reshape(r, P // group, group)
    q = QMAX[bits]
    want = xg.abs().amax(-1) / q
    scale = want.to(torch.bfloat16)
    low = scale.float() < want  # rounded down: the group's largest entry would be clipped
    scale[low] = torch.nextafter(scale[low], torch.full_like(scale[low], math.inf))
    s = scale.float().clamp_min(torch.finfo(torch.bfloat16).tiny)[..., None]
    codes = (xg / s).round().clamp_(-q, q).to(torch.int8).reshape(r, P)
    if bits == 4:
        u = (codes + 8).to(torch.uint8)
        codes = u[:, 0::2] | (u[:, 1::2] << 4)
    return QTensor(codes.contiguous(), scale.contiguous(), (r, p), bits, group)


def dequantize(t: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:class:`QTensor` → ``(r, p)`` in ``dtype``."""
    r, p = t.shape
    if t.bits == 4:
        lo = (t.codes & 0x0F).to(torch.int8) - 8
        hi = (t.codes >> 4).to(torch.int8) - 8
        codes = torch.stack([lo, hi], dim=-1).reshape(r, -1)
    else:
        codes = t.codes
    x = codes.reshape(r, -1, t.group).to(dtype) * t.scale.to(dtype)[..., None]
    return x.reshape(r, -1)[:, :p]
