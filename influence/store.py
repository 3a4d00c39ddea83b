"""The influence store: the one owner of the on-disk format.

Layout of a store root::

    root/
      CURRENT                  name of the current version (atomically replaced)
      versions/
        v000007/               immutable once renamed into place
          manifest.json        Manifest (below), with sha256 of every file
          params.safetensors   "m{e}/{param}"                   float32
          responses.safetensors "m{e}/examples/{param}" (n, *shape),
                               "m{e}/sources/{param}"  (S, *shape), store dtype;
                               with ``examples_rank`` r the per-example part is
                               compressed: "m{e}/examples/{param}" (r, *shape)
                               is a basis and "m{e}/examples_coef" (n, r)
                               float32 the coefficients, u_i = Σ_j coef[i,j] b_j;
                               with ``examples_quant`` {bits, group} the
                               per-example rows (or basis) are the flattened
                               parameter vectors as group-wise integer codes
                               (``influence.quant``): "m{e}/examples_q/codes"
                               uint8/int8, "m{e}/examples_q/scale" bfloat16
          training.safetensors "X" (n, d) float32, "y" (n,) int64 (optional)
          <asset files>        e.g. tokenizer.json, documents.json (text stores),
                               audit.json (``fa-worker audit``: ``Store.audit``);
                               hf stores: tokenizer/* (the fast tokenizer's files) and,
                               when the base is copied, base/* (its config and weights)

Format 2 added the model kind (``model.kind``: ``mlp``, ``gpt`` or ``hf``), the
compressed per-example responses and asset files; format 1 stores (MLP, no
compression, no assets) still load.

Publishing writes a hidden temporary directory, fsyncs it, renames it into
``versions/`` and then flips ``CURRENT`` with ``os.replace``: a reader sees
the old or the new version, never a partial one. Old versions are pruned to
``keep`` (never the current one). ``republish`` makes a new version that is
an existing one plus extra assets (the files copied and re-verified, the
manifest's ``extra`` updated): how an audit is added to a store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import StoreError
from .files import sha256_file
from .heldout import HELDOUT_ASSET, HeldoutSample
from .layout import ParamLayout
from .quant import QMAX, QTensor, dequantize, quantize
from .spec import ModelSpec

FORMAT_VERSION = 3  # 3: examples_quant
READABLE_FORMATS = (1, 2, 3)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
_FILES = ("params.safetensors", "responses.safetensors", "training.safetensors")
ASSET_FOLDERS = ("base", "tokenizer")  # hf stores: the copied base model and the tokenizer, as whole folders
AUDIT_ASSET = "audit.json"  # the source-level audit of a version (worker/audit.py writes it)


class Manifest(BaseModel):
    format_version: int
    version: str = ""
    created_at: str = ""
    model: ModelSpec
    recipe: dict
    method: dict
    data: dict  # name, fingerprint, n, dim
    classes: list[str]
    source_ids: list[str]
    example_source: list[int]
    members: int
    dtype: str
    has_examples: bool
    has_sources: bool
    examples_rank: int | None = None  # per-example responses as a rank-r basis + (n, r) coefficients
    examples_quant: dict | None = None  # {"bits": 2|3|4|8, "group": g}: per-example rows stored as integer codes
    assets: list[str] = []  # extra files of the version (checksummed in ``files``)
    files: dict[str, str] = {}
    extra: dict = {}


@dataclass
class Store:
    """A loaded, verified store version (tensors on CPU)."""

    path: Path
    manifest: Manifest
    params: list[dict[str, torch.Tensor]]  # per member
    examples: list[dict[str, torch.Tensor]] | None  # per member, (n, *shape)
    sources: list[dict[str, torch.Tensor]] | None  # per member, (S, *shape)
    X: torch.Tensor | None = None
    y: torch.Tensor | None = None
    example_coef: list[torch.Tensor] | None = None  # per member (n, r) when ``examples_rank`` is set
    assets: dict[str, bytes] | None = None
    # opened with packed=True: the quantised per-example rows as their codes (per member, (rows, p)), and
    # ``examples`` None until ``dense_examples()`` expands them
    packed: list[QTensor] | None = None

    def dense_examples(self) -> list[dict[str, torch.Tensor]] | None:
        """The per-example rows as float32 blocks, expanded from ``packed`` when the store holds them so."""
        if self.examples is None and self.packed is not None:
            self.examples = _expand(self.packed, self.manifest.model.layout())
        return self.examples

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def audit(self) -> dict | None:
        """The version's audit (``audit.json``, schema in ``worker/audit.py``:
        ``audited_version``, ``created_at``, ``settings``, ``metrics``,
        ``truth``, ``durations_s``, ...), or None when it has none."""
        blob = (self.assets or {}).get(AUDIT_ASSET)
        return None if blob is None else json.loads(blob)

    @property
    def heldout(self) -> HeldoutSample | None:
        """The version's held-out query sample (``heldout.json``, ``influence.heldout``), or None."""
        blob = (self.assets or {}).get(HELDOUT_ASSET)
        return None if blob is None else HeldoutSample.from_bytes(blob)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _next_version(versions: Path) -> str:
    nums = [int(p.name[1:]) for p in versions.glob("v[0-9]*") if p.name[1:].isdigit()]
    return f"v{max(nums, default=0) + 1:06d}"


@contextmanager
def _staging(versions: Path):
    """A hidden directory to write a version into; removed if anything fails
    before it is installed (``_install`` renames it into place)."""
    tmp = versions / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(
    root: str | Path,
    manifest: Manifest,
    params: list[dict[str, torch.Tensor]],
    examples: list[dict[str, torch.Tensor]] | None,
    sources: list[dict[str, torch.Tensor]] | None,
    training: tuple[torch.Tensor, torch.Tensor] | None = None,
    keep: int = 3,
    example_coef: list[torch.Tensor] | None = None,
    assets: dict[str, bytes] | None = None,
) -> Path:
    """Write a new version beside the old ones and make it current.
    ``example_coef`` (per member ``(n, r)``): ``examples`` are then rank-r
    bases ``(r, *shape)``; ``assets``: extra files, name -> bytes;
    ``manifest.examples_quant`` ``{"bits", "group"}``: ``examples`` stored
    as integer codes (``influence.quant``) instead of ``manifest.dtype``."""
    root = Path(root)
    versions = root / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    with _staging(versions) as tmp:
        dtype = DTYPES[manifest.dtype]
        tensors = {f"m{e}/{k}": v.float() for e, p in enumerate(params) for k, v in p.items()}
        _write_tensors(tmp / "params.safetensors", tensors)
        _write_tensors(tmp / "responses.safetensors", _responses(manifest, examples, sources, example_coef, dtype))
        if training is not None:
            _write_tensors(tmp / "training.safetensors", {"X": training[0].float(), "y": training[1].long()})
        for name, blob in (assets or {}).items():
            _check_asset_name(name)
            _write_asset(tmp / name, blob)
        names = [*_FILES, *(assets or {})]
        files = {f: sha256_file(tmp / f) for f in names if (tmp / f).exists()}
        man = manifest.model_copy(
            update={
                "format_version": FORMAT_VERSION,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": files,
                "has_examples": examples is not None,
                "has_sources": sources is not None,
                "members": len(params),
                "examples_rank": None if example_coef is None else int(example_coef[0].shape[1]),
                "assets": sorted(assets or {}),
            }
        )
        name = _install(versions, tmp, man)
    set_current(root, name)
    prune(root, keep)
    return versions / name


def _responses(man: Manifest, examples, sources, example_coef, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    resp = {}
    q = man.examples_quant
    for e, block in enumerate(examples or []):
        if q is None:
            resp.update({f"m{e}/examples/{k}": v.to(dtype) for k, v in block.items()})
        else:
            codes = quantize(man.model.layout().flatten(block).float(), int(q["bits"]), int(q["group"]))
            resp[f"m{e}/examples_q/codes"], resp[f"m{e}/examples_q/scale"] = codes.codes, codes.scale
    for e, block in enumerate(sources or []):
        resp.update({f"m{e}/sources/{k}": v.to(dtype) for k, v in block.items()})
    for e, coef in enumerate(example_coef or []):
        resp[f"m{e}/examples_coef"] = coef.float().contiguous()
    return resp


def _expand(codes: list[QTensor], layout: ParamLayout) -> list[dict[str, torch.Tensor]]:
    """Quantised rows of every member back as float32 per-parameter blocks."""
    return [layout.unflatten(dequantize(q)) for q in codes]


def _quantized_codes(tensors, man: Manifest, rows: int, path: Path) -> list[QTensor]:
    """The ``examples_quant`` rows of every member as their codes, checked against the manifest."""
    q, layout = man.examples_quant, man.model.layout()
    bits, group = int(q.get("bits", 0)), int(q.get("group", 0))
    out = []
    for e in range(man.members):
        codes, scale = tensors.get(f"m{e}/examples_q/codes"), tensors.get(f"m{e}/examples_q/scale")
        P = -(-layout.numel // group) * group if group > 0 else -1
        want_codes = (rows, P if bits == 8 else P * bits // 8)
        if bits not in QMAX or group <= 0 or codes is None or scale is None or tuple(codes.shape) != want_codes \
                or tuple(scale.shape) != (rows, P // group):
            raise StoreError(f"{path}: examples_quant {q} does not match the stored codes of member {e}")
        out.append(QTensor(codes, scale, (rows, layout.numel), bits, group))
    return out


def _write_asset(path: Path, blob: bytes) -> None:
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _check_asset_name(name: str) -> None:
    folder, _, base = name.rpartition("/")
    if name in _FILES or name == "manifest.json" or (folder and folder not in ASSET_FOLDERS) or not base \
            or base.startswith("."):
        raise ValueError(f"asset name {name!r} is reserved or not a plain file name (or one in {ASSET_FOLDERS})")


def _install(versions: Path, tmp: Path, man: Manifest) -> str:
    """Write the manifest into the finished ``tmp`` dir and rename it to the
    next free version name; returns that name."""
    while True:  # a concurrent publisher may take the name first
        name = _next_version(versions)
        (tmp / "manifest.json").write_text(man.model_copy(update={"version": name}).model_dump_json(indent=1))
        _fsync_dir(tmp)
        try:
            os.rename(tmp, versions / name)
            break
        except OSError:
            if not (versions / name).exists():
                raise
    _fsync_dir(versions)
    return name


def republish(root: str | Path, version: str, assets: dict[str, bytes], extra: dict | None = None,
              keep: int = 3, expect_current: bool = True) -> Path:
    """Publish a new version that is ``version`` plus ``assets`` (name ->
    bytes; a same-named asset is replaced) with ``extra`` merged into the
    manifest's ``extra``, and make it current. Every file is copied and its
    copy checked against the old manifest's sha256 (a corrupt source is
    refused, never propagated). ``expect_current``: refuse (``StoreError``)
    when ``version`` is no longer the current one, so a build published
    meanwhile is not rolled back."""
    root = Path(root)
    versions = root / "versions"
    src = versions / version
    old = read_manifest(src)
    for name in assets:
        _check_asset_name(name)
    with _staging(versions) as tmp:
        files = {}
        for name, digest in old.files.items():
            if name in assets:
                continue
            (tmp / name).parent.mkdir(exist_ok=True)
            try:
                shutil.copyfile(src / name, tmp / name)
            except FileNotFoundError:
                raise StoreError(f"{src / name}: missing") from None
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
            if sha256_file(tmp / name) != digest:
                raise StoreError(f"{src / name}: checksum mismatch (corrupt or modified)")
            files[name] = digest
        for name, blob in assets.items():
            _write_asset(tmp / name, blob)
            files[name] = sha256_file(tmp / name)
        man = old.model_copy(update={
            "format_version": max(old.format_version, 2) if assets else old.format_version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "files": files,
            "assets": sorted({*old.assets, *assets}), "extra": {**old.extra, **(extra or {})}})
        if expect_current and current_version(root) != version:
            raise StoreError(f"{root}: current version moved on from {version} to {current_version(root)}; "
                             "nothing published")
        name = _install(versions, tmp, man)
    set_current(root, name)
    prune(root, keep)
    return versions / name


def set_current(root: str | Path, version: str) -> None:
    """Atomically point ``CURRENT`` at an existing version (also a rollback)."""
    root = Path(root)
    if not (root / "versions" / version / "manifest.json").exists():
        raise StoreError(f"{root}: no version {version!r}")
    tmp = root / f".CURRENT.{uuid.uuid4().hex}"
    tmp.write_text(version + "\n")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, root / "CURRENT")
    _fsync_dir(root)


def current_version(root: str | Path) -> str:
    path = Path(root) / "CURRENT"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise StoreError(f"{root}: no store published yet (no CURRENT file)") from None


def list_versions(root: str | Path) -> list[str]:
    versions = Path(root) / "versions"
    return sorted(p.name for p in versions.glob("v[0-9]*")) if versions.exists() else []


def prune(root: str | Path, keep: int) -> list[str]:
    """Delete the oldest versions beyond ``keep``; never the current one."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    try:
        cur = current_version(root)
    except StoreError:
        cur = None
    old = [v for v in list_versions(root) if v != cur]
    doomed = old[: max(0, len(old) - (keep - 1))]
    for v in doomed:
        shutil.rmtree(Path(root) / "versions" / v, ignore_errors=True)
    return doomed


def read_manifest(path: Path) -> Manifest:
    try:
        man = Manifest.model_validate_json((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: not a store version (no manifest.json)") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise StoreError(f"{path}/manifest.json: invalid manifest: {err['loc']}: {err['msg']}") from None
    except ValueError as e:
        raise StoreError(f"{path}/manifest.json: not valid JSON: {e}") from None
    if man.format_version not in READABLE_FORMATS:
        raise StoreError(f"{path}: store format {man.format_version}, this reader understands {READABLE_FORMATS}")
    if path.parent.name == "versions" and man.version and man.version != path.name:
        # a copied or renamed directory: served under the manifest's name, its cache and credit would be another's
        raise StoreError(f"{path}: its manifest names version {man.version!r}, not {path.name!r} "
                         "(a copied or renamed version directory)")
    return man


def _load(path: Path, name: str, man: Manifest) -> dict[str, torch.Tensor]:
    file = path / name
    if name not in man.files:
        return {}
    if not file.exists():
        raise StoreError(f"{file}: missing")
    if sha256_file(file) != man.files[name]:
        raise StoreError(f"{file}: checksum mismatch (corrupt or modified)")
    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise StoreError(f"{file}: unreadable: {e}") from None


def _member_blocks(tensors, prefix: str, members: int, layout: ParamLayout, rows: int, path: Path):
    out = []
    for e in range(members):
        block = {}
        for name, shape in zip(layout.names, layout.shapes):
            key = f"m{e}/{prefix}{name}"
            t = tensors.get(key)
            want = (rows, *shape) if rows >= 0 else shape
            if t is None or tuple(t.shape) != tuple(want):
                got = None if t is None else tuple(t.shape)
                raise StoreError(f"{path}: tensor {key!r} has shape {got}, manifest implies {want}")
            block[name] = t
        out.append(block)
    return out


def load_version(path: str | Path, packed: bool = False) -> Store:
    """Load and verify one version directory (manifest, checksums, shapes).
    ``packed``: quantised per-example rows stay as their codes (``Store.packed``;
    a readout dequantises them block by block) instead of float32 blocks."""
    path = Path(path)
    man = read_manifest(path)
    layout = man.model.layout()
    n, n_src = len(man.example_source), len(man.source_ids)
    if man.example_source and not 0 <= min(man.example_source) <= max(man.example_source) < n_src:
        raise StoreError(f"{path}: example_source refers to a source outside source_ids")
    params = _member_blocks(_load(path, "params.safetensors", man), "", man.members, layout, -1, path)
    resp = _load(path, "responses.safetensors", man)
    r = man.examples_rank
    codes = None  # the quantised rows, kept as codes when ``packed``
    if not man.has_examples:
        ex = None
    elif man.examples_quant is not None:
        codes = _quantized_codes(resp, man, n if r is None else r, path)
        ex = None if packed else _expand(codes, layout)
    else:
        ex = _member_blocks(resp, "examples/", man.members, layout, n if r is None else r, path)
    coef = None
    if man.has_examples and r is not None:
        coef = [resp.get(f"m{e}/examples_coef") for e in range(man.members)]
        if any(c is None or tuple(c.shape) != (n, r) for c in coef):
            raise StoreError(f"{path}: examples_coef missing or not of shape {(n, r)}")
    src = _member_blocks(resp, "sources/", man.members, layout, n_src, path) if man.has_sources else None
    train = _load(path, "training.safetensors", man)
    assets = {name: _load_asset(path, name, man) for name in man.assets}
    if AUDIT_ASSET in assets:
        _check_audit(path / AUDIT_ASSET, assets[AUDIT_ASSET])
    if HELDOUT_ASSET in assets:
        try:
            HeldoutSample.from_bytes(assets[HELDOUT_ASSET])
        except ValueError as e:
            raise StoreError(f"{path / HELDOUT_ASSET}: not a held-out sample ({str(e).splitlines()[0]})") from None
    return Store(path, man, params, ex, src, train.get("X"), train.get("y"), coef, assets, codes if packed else None)


def _check_audit(file: Path, blob: bytes) -> None:
    try:
        audit = json.loads(blob)
    except ValueError as e:
        raise StoreError(f"{file}: not valid JSON: {e}") from None
    if not isinstance(audit, dict):
        raise StoreError(f"{file}: must hold a JSON object")


def _load_asset(path: Path, name: str, man: Manifest) -> bytes:
    file = path / name
    if name not in man.files or not file.is_file():
        raise StoreError(f"{file}: asset missing")
    blob = file.read_bytes()
    if hashlib.sha256(blob).hexdigest() != man.files[name]:
        raise StoreError(f"{file}: checksum mismatch (corrupt or modified)")
    return blob


def open_store(root: str | Path, version: str | None = None, packed: bool = False) -> Store:
    """Load ``version`` (default: the current one) from a store root (``packed``: see ``load_version``)."""
    root = Path(root)
    for _ in range(3):  # CURRENT may move on, and the old version be pruned, while we read
        name = version or current_version(root)
        path = root / "versions" / name
        try:
            return load_version(path, packed)
        except StoreError:
            if path.exists():  # the version is there and is bad: a real error
                raise
            if version:  # asked for by name: no point reading CURRENT again
                break
    raise StoreError(f"{root}: version {version or name!r} not found (have {list_versions(root)})")
