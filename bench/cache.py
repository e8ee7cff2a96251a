"""Content-addressed cache of trained weights and generated tensors.

Each entry is ``<cache_dir>/<kind>/<name>-<hash>.safetensors`` with a JSON sidecar holding the
metadata, where ``hash`` is a digest of everything that determined the weights (plugin name,
parameters, dataset, classifier hash, seed, training budget). A later run with the same key
reloads instead of retraining; a file that cannot be read or does not fit raises
:class:`CheckpointError` naming the file and the fix.

Every read is verified: the sidecar records a SHA-256 digest of the tensors *and* the metadata, so
a weight file or a recorded number (a test accuracy, a training loss) changed after it was written
is an error, never copied into a result. Memoized tensors (:meth:`Cache.memo_tensors`: attack sets,
training sets) are derivable, so a failed check there recomputes them and says so in the log. An
entry of an older format (no digest) is a cache miss: it is recomputed and overwritten.
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
from bench.errors import BenchError, CheckpointError

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: the sidecar holds a digest of tensors and metadata


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serializable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def tensors_digest(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``meta`` (canonical JSON) and every tensor's name, dtype, shape and bytes,
    in name order; reads the CPU tensors' memory without copying it."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


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
        """Load cached weights into ``module``; return their metadata, or None when not cached.

        Raises:
            CheckpointError: the entry is corrupt, was made for another key, was altered after it
                was written, or does not fit ``module`` (the message names the file).
        """
        hit = self.load_tensors(kind, name, key)
        if hit is None:
            return None
        state, meta = hit
        path = self.path(kind, name, key)
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
        """Save ``tensors`` and ``meta`` under ``key`` (atomically, sidecar with their digest)."""
        path = self.path(kind, name, key)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = json.loads(json.dumps(meta or {}, default=str))  # what a later read will see
        sidecar = {"format": FORMAT_VERSION, "key": key, "key_hash": stable_hash(key),
                   "digest": tensors_digest(tensors, meta), "meta": meta}
        # Sidecar first: an interrupted save then leaves no weight file, i.e. a cache miss,
        # rather than weights without metadata (an error until the user deletes them).
        _atomic_write(path.with_suffix(".json"),
                      lambda p: p.write_text(json.dumps(sidecar, indent=1, default=str)))
        _atomic_write(path, lambda p: save_file(tensors, str(p)))
        return path

    def load_tensors(self, kind: str, name: str,
                     key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The tensors and metadata cached under ``key``, verified; None when not cached (or
        cached by an older format, which is then recomputed).

        Raises:
            CheckpointError: corrupt, made for another key, or altered after it was written.
        """
        path = self.path(kind, name, key)
        if not path.exists():
            return None
        sidecar = self._read_sidecar(path, key)
        if sidecar.get("format") != FORMAT_VERSION or "digest" not in sidecar:
            log.info("cache entry %s has an older format (no digest); recomputing it", path)
            return None
        tensors, meta = self._read_tensors(path), dict(sidecar.get("meta", {}))
        if tensors_digest(tensors, meta) != sidecar["digest"]:
            raise CheckpointError(
                f"Cached file {path} or its metadata {path.with_suffix('.json').name} was altered "
                f"after it was written (digest mismatch). Delete it to recompute it."
            )
        return tensors, meta

    def memo_tensors(self, kind: str, name: str, key: dict[str, Any],
                     make: Callable[[], dict[str, torch.Tensor]],
                     validate: Callable[[dict[str, torch.Tensor]], None] | None = None
                     ) -> dict[str, torch.Tensor]:
        """Return the cached tensors for ``key``, computing and caching them on a miss.

        What is read back is verified (digest) and passed to ``validate`` (which raises a
        :class:`BenchError` to reject it); a cached entry that fails either is recomputed and
        overwritten, with a warning naming the file. ``validate`` also checks what ``make``
        returns, before it is cached."""
        try:
            hit = self.load_tensors(kind, name, key)
            if hit is not None:
                if validate is not None:
                    validate(hit[0])
                return hit[0]
        except BenchError as exc:
            log.warning("recomputing %s, rejected on reading: %s", self.path(kind, name, key),
                        exc)
        tensors = make()
        if validate is not None:
            validate(tensors)
        self.save_tensors(tensors, kind, name, key)
        return tensors

    def memo_json(self, kind: str, name: str, key: dict[str, Any],
                  make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A small JSON record for ``key`` (e.g. a measured batch size): read back when the key
        it stores is ``key``, else made by ``make``, stored with its key (atomically) and
        returned. An unreadable file is made again."""
        path = self.path(kind, name, key).with_suffix(".json")
        stored = json.loads(json.dumps(key, default=str))  # as the file holds it
        try:
            hit = json.loads(path.read_text())
            if isinstance(hit, dict) and hit.get("key") == stored:
                return hit
        except (OSError, ValueError):
            pass
        record = {**make(), "key": stored}
        _atomic_write(path, lambda p: p.write_text(json.dumps(record, indent=1,
                                                               sort_keys=True)))
        return record

    # -- helpers ------------------------------------------------------------------------------
    def _read_tensors(self, path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"Cached file {path} is corrupt ({exc}). Delete it to recompute it."
            ) from exc

    def _read_sidecar(self, path: Path, key: dict[str, Any]) -> dict[str, Any]:
        side = path.with_suffix(".json")
        try:
            sidecar = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"Metadata {side} of cached weights is missing or corrupt ({exc}). "
                f"Delete {path} to recompute it."
            ) from exc
        if not isinstance(sidecar, dict) or sidecar.get("key_hash") != stable_hash(key):
            got = sidecar.get("key_hash") if isinstance(sidecar, dict) else None
            raise CheckpointError(
                f"Cached file {path} was made for a different configuration "
                f"(key hash {got} != {stable_hash(key)}). Delete it to "
                f"recompute it."
            )
        return sidecar
