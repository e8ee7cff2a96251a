"""Content-addressed cache of trained weights and generated tensors.

Each entry is ``<cache_dir>/<kind>/<name>-<hash>.safetensors`` with a JSON sidecar holding the
metadata, where ``hash`` is a digest of everything that determined the weights (plugin name,
parameters, dataset, classifier hash, seed, training budget). A later run with the same key
reloads instead of retraining; a file that cannot be read or does not fit raises
:class:`CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bench.config import cache_dir
from bench.errors import CheckpointError

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serializable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def load_error_summary(exc: BaseException, limit: int = 200) -> str:
    """One line saying why a state dict did not load.

    torch's first line only says "Error(s) in loading state_dict for X:"; the next one names the
    missing or unexpected keys or the size mismatch, so that one is kept.
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    why = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    why = why.rstrip(".")
    return why if len(why) <= limit else why[: limit - 3] + "..."


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Cache:
    """Weights and tensors keyed by a hash of what determined them.

    Args:
        root: cache directory; defaults to :func:`bench.config.cache_dir`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()

    def path(self, kind: str, name: str, key: dict[str, Any]) -> Path:
        """Where the entry for ``key`` lives (``.safetensors``; the sidecar is ``.json``)."""
        safe = re.sub(r"[^a-zA-Z0-9_.-]", "_", name)
        return self.root / kind / f"{safe}-{stable_hash(key)}.safetensors"

    # -- modules ------------------------------------------------------------------------------
    def load_module(self, module: nn.Module, kind: str, name: str,
                    key: dict[str, Any]) -> dict[str, Any] | None:
        """Load cached weights into ``module``; return their metadata, or None when not cached."""
        path = self.path(kind, name, key)
        if not path.exists():
            return None
        meta = self._read_meta(path, key)
        state = self._read_tensors(path)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"Cached weights {path} do not fit {name} ({load_error_summary(exc)}). Delete the "
                f"file to retrain."
            ) from exc
        log.info("loaded cached %s %s from %s", kind, name, path)
        return meta

    def save_module(self, module: nn.Module, kind: str, name: str, key: dict[str, Any],
                    meta: dict[str, Any] | None = None) -> Path:
        """Save ``module``'s state dict and metadata under ``key`` (atomically)."""
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        return self.save_tensors(state, kind, name, key, meta)

    # -- raw tensors --------------------------------------------------------------------------
    def save_tensors(self, tensors: dict[str, torch.Tensor], kind: str, name: str,
                     key: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
        path = self.path(kind, name, key)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        sidecar = {"format": FORMAT_VERSION, "key": key, "key_hash": stable_hash(key),
                   "meta": meta or {}}
        # Sidecar first: an interrupted save then leaves no weight file, i.e. a cache miss,
        # rather than weights without metadata (an error until the user deletes them).
        _atomic_write(path.with_suffix(".json"),
                      lambda p: p.write_text(json.dumps(sidecar, indent=1, default=str)))
        _atomic_write(path, lambda p: save_file(tensors, str(p)))
        return path

    def load_tensors(self, kind: str, name: str,
                     key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        path = self.path(kind, name, key)
        if not path.exists():
            return None
        meta = self._read_meta(path, key)
        return self._read_tensors(path), meta

    def memo_tensors(self, kind: str, name: str, key: dict[str, Any],
                     make: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Return the cached tensors for ``key``, computing and caching them on a miss."""
        hit = self.load_tensors(kind, name, key)
        if hit is not None:
            return hit[0]
        tensors = make()
        self.save_tensors(tensors, kind, name, key)
        return tensors

    # -- helpers ------------------------------------------------------------------------------
    def _read_tensors(self, path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"Cached file {path} is corrupt ({exc}). Delete it to recompute it."
            ) from exc

    def _read_meta(self, path: Path, key: dict[str, Any]) -> dict[str, Any]:
        side = path.with_suffix(".json")
        try:
            sidecar = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"Metadata {side} of cached weights is missing or corrupt ({exc}). "
                f"Delete {path} to recompute it."
            ) from exc
        if sidecar.get("key_hash") != stable_hash(key):
            raise CheckpointError(
                f"Cached file {path} was made for a different configuration "
                f"(key hash {sidecar.get('key_hash')} != {stable_hash(key)}). Delete it to "
                f"recompute it."
            )
        return dict(sidecar.get("meta", {}))
