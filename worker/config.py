"""Validated worker configuration with named presets.

A config is a preset (``digits``, ``tiny``), optionally overlaid by a TOML
or YAML file and ``section.key=value`` overrides; every field is checked by
pydantic, so a typo or an out-of-range value fails before any work starts.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from influence import registry
from influence.datasets import BUILT_IN
from influence.kind import ModelKind
from influence.mlp.model import MLPSpec
from influence.simulate.settings import MethodConfig
from influence.spec import ModelSpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """``name`` a built-in set (``digits``; ``brown``, text); ``path`` a user
    file instead (``.npz``/``.csv``/``.parquet`` for an MLP; text for ``gpt`` and
    ``hf``: ``.jsonl``, or a Hugging Face ``datasets`` table: ``.parquet``, ``.arrow``
    or a ``save_to_disk`` directory, ``influence.datasets.documents``)."""

    name: Literal["digits", "brown", "brown-ft"] | None = "digits"
    path: Path | None = None
    block_tokens: int = Field(0, ge=0, description="hf: tokens per fine-tuning block (inputs + 1); 0 = "
                              "min(the model's context, 512) + 1 (brown-ft: 65, ft-protocol); a document's "
                              "remainder, or a document shorter than a block, is a block of its own length")
    max_blocks: int = Field(0, ge=0, description="hf: blocks per document from its start; 0 = all (brown-ft: 4)")
    allow_empty_sources: bool = Field(False, description="hf: publish even when a source has no training signal "
                                      "(all its documents shorter than 2 tokens); recorded in the manifest")
    sources: Literal["publication", "genre"] = Field("publication", description="brown: the source level")
    label_column: str = "label"
    n_sources: int = Field(20, ge=1, description="publishers assigned to built-in data")
    skew: float = Field(1.0, ge=0, description="Zipf exponent of publisher sizes")
    affinity: float = Field(4.0, ge=0, description="extra weight of a publisher's preferred class")
    source_seed: int = 0
    limit: int | None = Field(None, ge=2, description="keep only the first N training examples")


class TrainConfig(_Section):
    """The MLP's recipe (``sgd`` / ``adam``); an ``hf`` fine-tune's (``adamw``:
    lr, betas, eps, weight decay, batch, epochs; warm-up 5% then cosine, the
    protocol's order); the protocol GPT's recipe is fixed (``influence.gpt.train``)."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where training, curvature products and simulation run (every model kind; "
                        "worker.device): auto = CUDA when present, else the CPU")
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(40, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0


class StoreConfig(_Section):
    root: Path = Path("stores/digits")
    keep: int = Field(3, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quant_bits: Literal[0, 2, 3, 4, 8] = Field(0, description="per-example responses as group-wise integer codes "
                                               "of this many bits (influence.quant); 0 = store dtype")
    quant_group: int = Field(128, ge=8, multiple_of=8, description="entries per quantisation scale")
    include_training_data: bool = True
    source_rows: Literal["auto", "always", "never"] = Field(
        "auto", description="text stores: also store each source's response (the exact sum of its documents' "
        "rows) as a row of its own, so a sources-only answer costs one tangent per source instead of one per "
        "document (or basis row); auto: when that cuts the tangents at least 4x")
    checkpoint_every: int = Field(25, ge=0, description="propagation steps between checkpoints; 0 = none")


class WorkerConfig(_Section):
    preset: str = "digits"
    data: DataConfig = DataConfig()
    model: ModelSpec = MLPSpec(widths=[64, 128, 10])
    train: TrainConfig = TrainConfig()
    method: MethodConfig = MethodConfig()
    store: StoreConfig = StoreConfig()

    def _recipe_reads_every_set_field(self, kind: ModelKind) -> None:
        used = kind.recipe_fields(self.train.optimizer)
        if used is None:
            takes = " or ".join(repr(o) for o in kind.recipes)
            raise ValueError(f"train.optimizer: the {kind.name} recipe trains with {takes}, "
                             f"not {self.train.optimizer!r}")
        ignored = sorted(self.train.model_fields_set - used)
        if ignored:
            opt = "" if None in kind.recipes else f" with optimizer {self.train.optimizer!r}"
            raise ValueError(f"train.{ignored[0]}: not used by the {kind.name} recipe{opt} (set: "
                             f"{', '.join(ignored)}); it reads only {', '.join(sorted(used))}")

    def quant(self) -> dict | None:
        """The manifest's ``examples_quant`` for this config."""
        s = self.store
        return {"bits": s.quant_bits, "group": s.quant_group} if s.quant_bits else None

    @model_validator(mode="after")
    def _consistent(self):
        if self.data.path is not None:
            self.data.name = None
        if self.data.name is None and self.data.path is None:
            raise ValueError("data: set either name='digits' or a path")
        kind = registry.of(self.model)
        p = self.data.path
        # a table (.parquet) is a text corpus for a text model, feature vectors for an MLP
        table = p is not None and p.suffix == ".parquet" and kind.text
        text = BUILT_IN.get(self.data.name) == "text" or table or (p is not None and (p.suffix in (".jsonl", ".arrow")
                                                                             or p.is_dir()))
        if text != kind.text:
            fits = " or ".join(repr(k.name) for k in registry.KINDS.values() if k.text == text)
            form = "text data needs" if text else "feature vectors need"
            raise ValueError(f"model.kind={kind.name!r} does not fit the data "
                             f"({'text' if text else 'feature vectors'}): {form} kind {fits}")
        if self.data.name is not None and self.data.name not in kind.datasets:
            takes = [k.name for k in registry.KINDS.values() if self.data.name in k.datasets]
            raise ValueError(f"data.name={self.data.name!r} is for model.kind {' or '.join(map(repr, takes))}; "
                             f"kind {kind.name!r} trains on {' or '.join(map(repr, kind.datasets))} or a data.path")
        if kind.needs_path and getattr(self.model, "path", None) is None:
            raise ValueError(f"model.path: a {kind.name} model needs its local directory (--model DIR)")
        self._recipe_reads_every_set_field(kind)
        if self.method.curvature not in kind.curvatures:
            raise ValueError(f"method.curvature: {self.method.curvature!r} is not built for kind {kind.name!r} "
                             f"(it has {' and '.join(kind.curvatures)})")
        if self.method.iterates > 1:
            if not kind.iterates:
                raise ValueError(f"method.iterates > 1: response averaging over iterates is not built for kind "
                                 f"{kind.name!r}; use 1")
            try:
                self.method.iterate_epochs(self.train.epochs)
            except ValueError as e:
                raise ValueError(f"method.iterates: {e}") from None
        return self


BROWN_FT_BASE = Path(__file__).resolve().parents[1] / "influence" / "hf" / "brown_ft_base"

# An hf fine-tune's recipe (ft-protocol's LoRA recipe) and simulation settings: the brown-ft and hf presets.
_FT = {
    "train": {"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0,
              "batch_size": 8, "epochs": 4, "seed": 2},
    # damping 0.01 and K = 30: chosen on the even subsets of bench.ft.quality's ground truth (BENCHMARKS.md)
    "method": {"rank": 128, "power": 1, "curvature_subset": 64, "steps": 30, "eta": 0.0, "damping": 0.01,
               "compress_rank": 0},
    "store": {"root": "stores/hf", "include_training_data": False, "quant_bits": 3},
}

PRESETS: dict[str, dict] = {
    # Responses averaged over the last 8 epoch ends, 4 epochs apart (bench.sources.quality: source LDS
    # 0.79 -> 0.84 with one model); the build runs 8 simulations, the store and serving are unchanged.
    "digits": {"method": {"iterates": 8, "iterate_every": 4}},
    # The language-model protocol (docs/lm-protocol.md): GPT 232k params on Brown, seed 2.
    "brown": {
        "data": {"name": "brown", "sources": "publication"},
        "model": {"kind": "gpt"},
        "train": {"seed": 2},
        "method": {"rank": 128, "power": 1, "curvature_subset": 64, "steps": 300, "eta": 0.0, "damping": 0.003,
                   "compress_rank": 0},
        "store": {"root": "stores/brown", "include_training_data": False, "quant_bits": 3},
    },
    # The fine-tuning benchmark (docs/ft-protocol.md): the shipped GPT-2-architecture base,
    # LoRA r=8 on c_attn/c_proj/c_fc, fine-tuned on the 450 Brown openings, 312 publishers as sources.
    "brown-ft": {
        "data": {"name": "brown-ft", "sources": "publication", "block_tokens": 65, "max_blocks": 4},
        "model": {"kind": "hf", "path": str(BROWN_FT_BASE), "trained": "lora",
                  "lora": {"target_modules": ["c_attn", "c_proj", "c_fc"]}},
        **_FT,
        "store": {**_FT["store"], "root": "stores/brown-ft"},
    },
    # `fa-worker build --model DIR --data docs.jsonl`: the same recipe on a user's model and corpus,
    # LoRA on every linear projection of its blocks (influence.hf.targets; the build prints them).
    "hf": {
        "data": {"name": None},
        "model": {"kind": "hf", "trained": "lora"},
        **_FT,
    },
    "tiny": {
        "data": {"limit": 120, "n_sources": 5},
        "model": {"widths": [64, 12, 10]},
        "train": {"epochs": 8, "batch_size": 32},
        "method": {"steps": 60, "damping": 0.01, "chunk": 64},
        "store": {"root": "stores/tiny"},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return text


def read_config_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as e:
        raise ConfigError(f"{path}: not valid {path.suffix[1:] or 'toml'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table of sections")
    return data


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file or field."""


def load_config(preset: str = "digits", file: Path | None = None, overrides: list[str] = ()) -> WorkerConfig:
    """Preset <- file <- ``section.key=value`` overrides, validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    data = _merge({"preset": preset}, PRESETS[preset])
    if file is not None:
        data = _merge(data, read_config_file(Path(file)))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        node = parsed = {}
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
        data = _merge(data, parsed)
    try:
        return WorkerConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        src = f"{file}: " if file else ""
        msg = err["msg"].removeprefix("Value error, ")  # a model validator's message names its own field
        raise ConfigError(f"{src}{where}: {msg}" if where else f"{src}{msg}") from None
