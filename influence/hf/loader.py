"""Loading Hugging Face models and tokenizers from local directories only.

``offline()`` sets the libraries' offline switches (``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE``, ``HF_DATASETS_OFFLINE``) before anything is loaded,
so no code path of ``transformers`` / ``huggingface_hub`` reaches a network;
every ``from_pretrained`` call also passes ``local_files_only=True`` and a
resolved directory path (never a hub id). A missing or incomplete directory
is a ``ModelFileError`` naming the path and what is missing.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

from ..errors import InfluenceError
from ..files import sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json",)


class ModelFileError(InfluenceError):
    """A model or tokenizer directory is missing, incomplete, or not what a store recorded."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")


def offline() -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # peft calls a transformers API that transformers 5 deprecates; nothing for a user to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the [hf] extra is not installed: load_* will say so
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def weight_files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def check_dir(path: str | Path, weights: bool = True, tokenizer: bool = True) -> Path:
    """The resolved directory, after checking it holds a config and weights
    (``weights``) and a fast tokenizer (``tokenizer``)."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise ModelFileError(p, "no such model directory (models load from local directories only)")
    if weights and not (p / "config.json").is_file():
        raise ModelFileError(p, "no config.json: not a Hugging Face model directory")
    if weights and not weight_files(p):
        raise ModelFileError(p, "no weight file (*.safetensors or *.bin)")
    if weights:
        check_config(p)
        for f in weight_files(p):  # headers only: a damaged file is named before any work starts
            check_weight_file(f)
    if tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ModelFileError(p, "no tokenizer.json: a fast tokenizer saved beside the model is needed")
    return p


def check_config(path: Path) -> None:
    """``config.json`` is a JSON object naming a ``model_type``."""
    f = path / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f, f"not a readable JSON file ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise ModelFileError(f, "no 'model_type': not a transformers model config")


def check_weight_file(f: Path) -> None:
    """A weight file is whole: a safetensors header that parses and data as
    long as the header says; a ``.bin`` a torch zip archive or pickle.

    Reads only the header (a few KB), so a multi-GB file costs nothing; a
    truncated download or a copy cut short is named here, not deep inside
    the loader."""
    size = f.stat().st_size
    with f.open("rb") as fh:
        head = fh.read(8)
        if f.name.endswith(".safetensors"):
            if len(head) < 8:
                raise ModelFileError(f, f"truncated: {size} bytes, shorter than a safetensors header")
            n = struct.unpack("<Q", head)[0]
            if n > min(size - 8, 100 * 2**20):
                raise ModelFileError(f, f"truncated or not safetensors: a header of {n} bytes in a file of {size}")
            try:
                header = json.loads(fh.read(n))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise ModelFileError(f, f"not a safetensors file: its header does not parse ({e})") from None
            if 8 + n + end > size:
                raise ModelFileError(f, f"truncated: the header says {8 + n + end} bytes, the file has {size}")
        elif not (zipfile.is_zipfile(f) or head[:1] == b"\x80"):
            raise ModelFileError(f, "not a PyTorch weight file (neither a zip archive nor a pickle)")


def weight_checksums(path: Path) -> dict[str, str]:
    """sha256 of every weight file and of ``config.json``, by file name."""
    return {f.name: sha256_file(f) for f in [path / "config.json", *weight_files(path)]}


def verify_checksums(path: Path, want: dict[str, str]) -> None:
    """Refuse a base directory whose files differ from those a store was built on."""
    have = {f.name for f in [path / "config.json", *weight_files(path)]}
    for name, digest in want.items():
        f = path / name
        if not f.is_file():
            raise ModelFileError(f, "missing: the store was built on a base with this file")
        if sha256_file(f) != digest:
            raise ModelFileError(f, "sha256 differs from the base the store was built on "
                                    f"(want {digest[:12]}…): refusing to score with another model")
    extra = sorted(have - set(want))
    if extra:
        raise ModelFileError(path, f"weight files the store's base did not have: {extra}")


def load_tokenizer(path: str | Path):
    offline()
    from transformers import AutoTokenizer

    p = check_dir(path, weights=False)
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as e:
        raise ModelFileError(p, f"cannot load the tokenizer: {e}") from None
    if not tok.is_fast:
        raise ModelFileError(p, "the tokenizer is not a fast tokenizer")
    return tok


def load_model(path: str | Path, dtype=None):
    """``AutoModelForCausalLM`` from ``path`` with eager attention, in eval mode."""
    offline()
    import torch
    from transformers import AutoModelForCausalLM

    p = check_dir(path, tokenizer=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, attn_implementation="eager",
                                                     dtype=dtype or torch.float32)
    except Exception as e:  # noqa: BLE001 - transformers, safetensors and torch raise many types; all mean this
        raise ModelFileError(p, f"cannot load the model: {type(e).__name__}: {e}") from None
    return model.eval()
