"""``HFSpec``: a Hugging Face causal LM as a store records it.

- the base: ``base = "store"`` (its ``config.json``, weights and tokenizer
  copied into the store version's ``base/`` folder, checksummed like every
  store file) or ``"path"`` (referenced by ``base_path``, with the sha256 of
  ``config.json`` and of every weight file in ``base_sha256``, verified before
  every load: a store never scores with another base);
- the trained subspace: ``trained`` = ``all`` (every parameter), ``lora``
  (``peft`` LoRA adapters, ``lora`` settings; the base frozen) or
  ``patterns`` (base parameters whose names match one of ``patterns``,
  ``fnmatch`` syntax, e.g. ``transformer.h.3.*``); ``names`` / ``shapes``:
  the trained parameters in order (the layout of every stored response), as
  ``HFCausalLM.named_parameters`` names them; filled in by the worker;
- ``context`` (tokens a query may hold), ``vocab``, ``architecture``;
- ``dtype``: the parameters' dtype for training and readout (``float32``;
  ``bfloat16`` on GPUs).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..layout import ParamLayout


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(
        default_factory=list,
        description="module names (last component) LoRA wraps; empty: every linear projection of the blocks "
                    "(influence.hf.targets); a built store records the resolved list")


class HFSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["hf"] = "hf"
    path: str | None = Field(None, description="the base model's local directory (worker input)")
    base: Literal["store", "path"] = Field("store", description="copy the base into the store, or reference it")
    base_path: str | None = None
    base_sha256: dict[str, str] = {}
    architecture: str = ""
    context: int = Field(0, ge=0)
    vocab: int = Field(0, ge=0)
    trained: Literal["all", "lora", "patterns"] = "lora"
    lora: LoraSpec = LoraSpec()
    patterns: list[str] = []
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    names: list[str] = []
    shapes: list[list[int]] = []

    @model_validator(mode="after")
    def _check(self):
        if self.trained == "patterns" and not self.patterns:
            raise ValueError("trained='patterns' needs at least one name pattern in 'patterns'")
        if len(self.names) != len(self.shapes):
            raise ValueError("names and shapes must have the same length")
        return self

    def layout(self) -> ParamLayout:
        if not self.names:
            raise ValueError("this hf spec has no trained-parameter layout yet (the worker fills it in)")
        return ParamLayout(tuple(self.names), tuple(tuple(s) for s in self.shapes))
