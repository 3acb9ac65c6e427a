"""Where a model lives (local directory, packaged, Hugging Face cache) and how to get it.

Nothing here imports torch, and nothing reaches the network except ``download_model``:
availability is decided from the local disk and the local Hugging Face cache only, so
``medpg models check`` and error messages never hang on an unreachable hub.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from medpg.encoders.profiles import MINILM_NAME, Role, looks_like_path, packaged_minilm_path
from medpg.errors import ModelNotAvailableError

LocationKind = Literal["local dir", "packaged", "HF cache", "missing"]

ROLE_SETTING = {
    "query": "MEDPG_QUERY_MODEL",
    "article": "MEDPG_ARTICLE_MODEL",
    "cross": "MEDPG_CROSS_ENCODER_MODEL",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Formats medpg never loads; skipping them keeps downloads to what is needed.
_DOWNLOAD_IGNORE = [
    "*.onnx",
    "onnx/*",
    "openvino/*",
    "*.h5",
    "*.msgpack",
    "*.ot",
    "tf_model*",
    "flax_model*",
    "rust_model*",
    "coreml/*",
]


@dataclass(frozen=True)
class ModelLocation:
    """Where ``model`` was found: ``kind`` and ``path`` (None when missing), with a short ``detail``."""

    model: str
    kind: LocationKind
    path: Path | None
    detail: str = ""

    @property
    def available(self) -> bool:
        return self.kind != "missing"


def _weight_files(directory: Path) -> list[Path]:
    # Depth 2 covers old sentence-transformers layouts (0_Transformer/...) and Dense modules.
    files = [p for p in directory.glob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    files += [p for p in directory.glob("*/*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    return sorted(files)


def _complete(directory: Path) -> bool:
    has_config = (directory / "config.json").is_file() or (directory / "modules.json").is_file()
    return has_config and bool(_weight_files(directory))


def locate_model(model: str) -> ModelLocation:
    """Find ``model`` on this machine: a directory, the packaged MiniLM, or the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        packaged = path.resolve() == packaged_minilm_path().resolve()
        if not _complete(path):
            return ModelLocation(model, "missing", None, f"{path} has no config.json or weights")
        return ModelLocation(model, "packaged" if packaged else "local dir", path.resolve())
    if looks_like_path(model):
        return ModelLocation(model, "missing", None, f"no such directory: {path}")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(model, local_files_only=True))
    except ValueError as exc:  # not a valid repo id, and not a directory either
        return ModelLocation(model, "missing", None, f"neither a directory nor a hub name ({exc})")
    except OSError:  # LocalEntryNotFoundError: not in the cache
        return ModelLocation(model, "missing", None, "not in the Hugging Face cache")
    if not _complete(snapshot):
        return ModelLocation(model, "missing", None, f"incomplete in the Hugging Face cache ({snapshot})")
    return ModelLocation(model, "HF cache", snapshot)


def how_to_get(role: Role, profile: str) -> str:
    """The two ways to get a missing model, as one clause."""
    return (
        f"run `medpg models download --profile {profile}` on a machine with hub access, "
        f"or set {ROLE_SETTING[role]}=/path/to/local/copy"
    )


# What each role's model is called in messages.
ROLE_LABEL: dict[str, str] = {"query": "query encoder", "article": "article encoder", "cross": "cross-encoder"}


def missing_model_message(model: str, role: Role, profile: str, detail: str = "") -> str:
    """One line saying which model is missing and the two ways to get it."""
    why = f" ({detail})" if detail else ""
    return f"the {ROLE_LABEL[role]} {model!r} is not available on this machine{why}: {how_to_get(role, profile)}"


def require_model(model: str, role: Role, profile: str) -> ModelLocation:
    """``locate_model`` that raises ModelNotAvailableError (with how to get it) when missing."""
    location = locate_model(model)
    if not location.available:
        raise ModelNotAvailableError(missing_model_message(model, role, profile, location.detail))
    return location


@lru_cache(maxsize=32)
def _digest(directory: str) -> str:
    sha = hashlib.sha256()
    root = Path(directory)
    for name in ("config.json", "modules.json"):
        if (root / name).is_file():
            sha.update(name.encode() + b"\0" + (root / name).read_bytes())
    for weights in _weight_files(root):
        sha.update(str(weights.relative_to(root)).encode() + b"\0")
        with weights.open("rb") as fh:
            sha.update(hashlib.file_digest(fh, "sha256").digest())
    return sha.hexdigest()[:12]


def model_identity(location: ModelLocation) -> str:
    """A stable name for the model that made a vector: ``label@fingerprint``.

    The label is the hub name (or the directory name for a local copy, ``all-MiniLM-L6-v2`` for
    the packaged one); the fingerprint is the cache snapshot's commit, or for a directory a hash
    of its config and weights. It changes when the weights change, not when a copy moves.
    """
    if location.path is None:
        return location.model
    if location.kind == "HF cache":
        return f"{location.model}@{location.path.name[:12]}"
    label = MINILM_NAME if location.kind == "packaged" else location.path.name
    return f"{label}@{_digest(str(location.path))}"


def download_model(model: str) -> Path:
    """Fetch ``model`` from the hub into the local cache (or report a local directory as is)."""
    path = Path(model).expanduser()
    if path.is_dir() or looks_like_path(model):
        location = locate_model(model)
        if not location.available or location.path is None:
            raise ModelNotAvailableError(f"{model!r} is meant as a local directory but {location.detail}")
        return location.path
    from huggingface_hub import constants, snapshot_download

    if constants.HF_HUB_OFFLINE:
        raise ModelNotAvailableError(
            f"cannot download {model!r}: the hub is disabled in this environment (HF_HUB_OFFLINE=1); "
            "unset it, or copy the model here and point medpg at the directory"
        )
    try:
        return Path(snapshot_download(model, ignore_patterns=_DOWNLOAD_IGNORE))
    except (OSError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = (lines[0].removeprefix("Got: ") if lines else type(exc).__name__)[:200]
        raise ModelNotAvailableError(f"could not download {model!r} from the hub: {reason}") from None
