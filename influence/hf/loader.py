"""Loading Hugging Face models and tokenizers from local directories only.

``offline()`` sets the libraries' offline switches (``HF_HUB_OFFLINE``,
``TRANSFORMERS_OFFLINE``, ``HF_DATASETS_OFFLINE``) before anything is loaded,
so no code path of ``transformers`` / ``huggingface_hub`` reaches a network;
every ``from_pretrained`` call also passes ``local_files_only=True`` and a
resolved directory path (never a hub id). A missing or incomplete directory
is a ``ModelFileError`` naming the path and what is missing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import InfluenceError
from ..store import sha256_file

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
    if tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ModelFileError(p, "no tokenizer.json: a fast tokenizer saved beside the model is needed")
    return p


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
    except (OSError, ValueError, KeyError) as e:
        raise ModelFileError(p, f"cannot load the model: {e}") from None
    return model.eval()
