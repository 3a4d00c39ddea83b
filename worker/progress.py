"""Build progress a person can read: one bar per stage, with its count, rate
and time left (tqdm), prefixed by the member (``[1/3]``), so a long stage such
as the curvature basis is never one silent step. ``Stages`` is the core's
``progress(stage, n, total)`` callback (``influence.text.lm_simulate``)."""

from __future__ import annotations

from tqdm.auto import tqdm

UNITS = {"fine-tune": "step", "gradients": "block", "curvature basis": "chunk", "responses": "stage"}


class Stages:
    def __init__(self, prefix: str = "", enabled: bool = True):
        self.prefix, self.enabled = prefix, enabled
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, n: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage or self.bar is None:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=f"{self.prefix}{stage}", unit=UNITS.get(stage, "it"))
        self.bar.update(n)

    def skipped(self, stage: str, what: str = "from the checkpoint") -> None:
        """A stage restored, not computed: said, so the user knows why it took no time."""
        if self.enabled:
            self.close()
            tqdm.write(f"{self.prefix}{stage}: {what}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stage = None
