"""A build's work in progress: ``ROOT/.work/<id>/``, one file per finished
stage (a member's fine-tuned parameters, its document gradients, its
curvature basis, its finished responses), so a build killed midway and
started again with the same settings and inputs continues where it stopped
and publishes the same store, bit for bit, that an uninterrupted build would.

``<id>`` hashes what changes the result (the settings, the corpus file's and
the base's sha256), so a changed input never resumes from stale work. Files
are written to a temporary name and renamed: a kill mid-write leaves no
half file. The directory is removed after the store is published.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch


class WorkDir:
    def __init__(self, root: str | Path, key: str):
        self.path = Path(root) / ".work" / hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path.mkdir(parents=True, exist_ok=True)
        self.restored: list[str] = []  # stages read back, in order (recorded in the manifest)
        # a torchrun build: a stage is restored only where every rank has its file, else all
        # recompute it (a rank skipping a stage whose collectives the others run would hang them)
        self.agree: Callable[[bool], bool] = lambda have: have

    def load(self, name: str):
        f = self.path / f"{name}.pt"
        if not self.agree(f.exists()):
            return None
        value = torch.load(f, map_location="cpu", weights_only=False)  # our own files: dataclasses inside
        self.restored.append(name)
        return value

    def save(self, name: str, value) -> None:
        tmp = self.path / f".{name}.pt.tmp"
        torch.save(value, tmp)
        os.replace(tmp, self.path / f"{name}.pt")

    def memo(self, prefix: str, device: torch.device | str, on_restore: Callable[[str], None] | None = None):
        """The core's ``memo(name, compute)`` for stages named ``prefix-name``; tensors back on ``device``."""

        def memo(name: str, compute: Callable[[], object]):
            value = self.load(f"{prefix}-{name}")
            if value is not None:
                if on_restore is not None:
                    on_restore(name)
                return _to(value, device)
            value = compute()
            self.save(f"{prefix}-{name}", _to(value, "cpu"))
            return value

        return memo

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            self.path.parent.rmdir()  # .work itself, when no other build's work is in it
        except OSError:
            pass


def _to(value, device):
    """``value`` with every tensor (in tuples, lists, dicts, dataclass fields) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.replace(value, **{f: _to(getattr(value, f), device) for f in value.__dataclass_fields__})
    return value
