"""Group-wise symmetric integer quantisation of response rows (8, 4, 3 or 2 bits).

A matrix ``x (r, p)`` is cut along ``p`` into groups of ``group``
consecutive entries (the last one zero-padded); each (row, group) gets one
bfloat16 scale ``s = max|x| / qmax`` (``qmax`` = 127, 7, 3, 1 for 8, 4, 3,
2 bits: 2 bits is ternary) and its entries are stored as ``round(x / s)``
in ``[−qmax, qmax]``. Codes under 8 bits are offset to ``[0, 2·qmax]`` and
packed little-endian, 8 codes in ``bits`` bytes. So
``|dequantize(quantize(x)) − x| ≤ s / 2`` entrywise (``s`` is rounded up to
bfloat16, so no entry is clipped), and the bytes are ``r·p·bits/8 + r·⌈p/group⌉·2``.

Why so few bits can do: a readout is a dot product over ~10⁵ coordinates,
and independent rounding errors average out in it, while a low-rank
truncation drops signal; on the Brown store 3-bit rows keep the scores'
ranking nearly intact where a basis of the same bytes does not
(``bench.lm.quality``).

Why group-wise: the rows mix parameter tensors whose scales differ by
orders of magnitude (embeddings, LayerNorm gains, attention); one scale
per row would spend the code range on the largest block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

QMAX = {8: 127, 4: 7, 3: 3, 2: 1}


@dataclass
class QTensor:
    """``codes``: int8 ``(r, P)`` for 8 bits, uint8 ``(r, P·bits/8)`` packed
    below (``P`` = ``p`` padded to a multiple of ``group``); ``scale``
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
    if x.ndim != 2 or group < 1 or (bits < 8 and group % 8):
        raise ValueError(f"quantize: needs a 2-d tensor and a positive group (a multiple of 8 below 8 bits), got "
                         f"{tuple(x.shape)}, group {group}")
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
    if bits < 8:
        codes = _pack(codes + q, bits)
    return QTensor(codes.contiguous(), scale.contiguous(), (r, p), bits, group)


def dequantize(t: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:class:`QTensor` → ``(r, p)`` in ``dtype``."""
    r, p = t.shape
    codes = t.codes if t.bits == 8 else _unpack(t.codes, t.bits) - QMAX[t.bits]
    x = codes.reshape(r, t.scale.shape[-1], t.group).to(dtype) * t.scale.to(dtype)[..., None]
    return x.reshape(r, t.scale.shape[-1] * t.group)[:, :p]


def _pack(u: torch.Tensor, bits: int) -> torch.Tensor:
    """``(r, P)`` codes in ``[0, 2^bits)`` → uint8 ``(r, P·bits/8)``: each run
    of 8 codes is one ``8·bits``-bit little-endian word."""
    r = u.shape[0]
    v = u.to(torch.int64).reshape(r, -1, 8)
    # (r, P/8): disjoint bit fields, so the sum is an OR
    word = (v << (bits * torch.arange(8, device=u.device))).sum(-1)
    out = torch.stack([(word >> (8 * j)) & 0xFF for j in range(bits)], dim=-1)
    return out.to(torch.uint8).reshape(r, -1)


def _unpack(b: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`_pack` → int8 ``(r, P)``."""
    r = b.shape[0]
    y = b.to(torch.int64).reshape(r, b.shape[1] // bits, bits)
    word = (y << (8 * torch.arange(bits, device=b.device))).sum(-1)
    v = (word[..., None] >> (bits * torch.arange(8, device=b.device))) & ((1 << bits) - 1)
    return v.to(torch.int8).reshape(r, b.shape[1] // bits * 8)


class PackedRows:
    """Rows ``(r, p)`` kept as their integer codes and dequantised a block at
    a time: ``rows[s:e]`` is ``dequantize`` of those rows only (float32, the
    same numbers as slicing the whole dequantised matrix: rows are coded
    independently). What a readout holds resident is the codes, ``nbytes``,
    plus one block of float rows while it reads them."""

    def __init__(self, q: QTensor):
        self.q = q

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.nbytes

    def __len__(self) -> int:
        return self.q.shape[0]

    def __getitem__(self, rows: slice) -> torch.Tensor:
        s, e, step = rows.indices(self.q.shape[0])
        if step != 1:
            raise ValueError("PackedRows: contiguous row ranges only")
        q = self.q
        return dequantize(QTensor(q.codes[s:e], q.scale[s:e], (e - s, q.shape[1]), q.bits, q.group))

    def to(self, device: torch.device | str) -> PackedRows:
        q = self.q
        return PackedRows(QTensor(q.codes.to(device), q.scale.to(device), q.shape, q.bits, q.group))
