"""What produced a result, recorded in every row: library versions, torch's thread count and the
project's git revision."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

import torch

from bench.config import PROJECT_ROOT
from bench.version import __version__


def versions() -> dict[str, str]:
    """Library versions recorded in every row."""
    # CPU float reductions depend on the thread count, so weights trained with another count
    # differ in their last bits (and a cell evaluated with them in its numbers): recorded.
    out = {"python": platform.python_version(), "bench": __version__,
           "torch_threads": str(torch.get_num_threads())}
    for pkg in ("torch", "torchvision", "torchattacks", "timm", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def git_revision() -> str:
    """HEAD of the project checkout, with ``-dirty`` when it has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
