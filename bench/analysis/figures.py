"""Figure helpers shared by every analysis plot: portable file names and reproducible files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def file_stem(*parts: str) -> str:
    """``parts`` joined by ``-`` as a portable file name: every run of characters other than
    letters, digits, ``.``, ``_`` and ``-`` becomes ``_`` (``timm:inception_v3`` ->
    ``timm_inception_v3``; a colon is invalid on Windows and in CI artifact uploads)."""
    return "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts)


def save_figure(fig: Any, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.svg`` into ``out_dir`` (created),
    without dates or random ids, so an unchanged plot gives unchanged files. Returns both paths."""
    import matplotlib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    with matplotlib.rc_context({"svg.hashsalt": "bench"}):
        fig.savefig(paths[0], dpi=150, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"Date": None})
    return paths
