"""The analysis plots on the leaderboard page: the PNG files that ``python -m bench plot
amplification|residual|sweep`` writes (into ``results/plots`` beside the default store unless
``--out``), found in the folders the page is told to search and embedded as data URIs.

No store records where a plot went, so the page searches folders: by default ``DIR/plots``
beside the page (``python -m bench leaderboard --format html --out DIR``) and the plots folder
beside the result store; ``--plots FOLDER`` names others. The section lists every folder
searched and what each held (a PNG's SVG and CSV siblings named beside it), and says so plainly
when nothing was found.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from bench.report._html import esc

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_COMMAND = "python -m bench plot amplification|residual|sweep ..."


def _unique(folders: Sequence[Path]) -> list[Path]:
    """``folders`` without repeats (the same folder reached by two paths counted once)."""
    seen: set[str] = set()
    out = []
    for f in folders:
        key = os.path.normcase(os.path.realpath(f))
        if key not in seen:
            seen.add(key)
            out.append(Path(f))
    return out


def find_plots(folders: Sequence[Path]) -> list[tuple[Path, bytes]]:
    """The PNG files directly in each of ``folders`` (in order, each folder's sorted by name),
    with their bytes; a file that cannot be read, or is not a PNG, is skipped with a warning."""
    found = []
    for folder in _unique(folders):
        for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("Plot %s not embedded: %s", path, exc)
                continue
            if not data.startswith(PNG_SIGNATURE):
                log.warning("Plot %s not embedded: not a PNG file", path)
                continue
            found.append((path, data))
    return found


def _figure(path: Path, data: bytes) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    siblings = [p.name for p in (path.with_suffix(".svg"), path.with_suffix(".csv"))
                if p.is_file()]
    also = f" (beside it: {esc(', '.join(siblings))})" if siblings else ""
    return (f'<figure class="plot"><img src="{uri}" alt="{esc(path.stem)}">'
            f"<figcaption>{esc(path.name)} from {esc(path.parent)}{also}</figcaption></figure>")


def plots_section(folders: Sequence[Path]) -> str:
    """The page's "Plots" section: what was searched, then every plot found, embedded."""
    folders = _unique(folders)
    found = find_plots(folders)
    counts = {str(f): sum(1 for p, _ in found if p.parent == f) for f in folders}
    searched = "".join(
        f"<li><code>{esc(f)}</code>: "
        + (f"{counts[str(f)]} PNG plot{'s' * (counts[str(f)] != 1)}" if f.is_dir()
           else "no such folder") + "</li>" for f in folders)
    head = '<h2 id="plots">Plots</h2>'
    if not found:
        where = f"<ul class=\"searched\">{searched}</ul>" if folders else ""
        return (f'{head}<p class="note empty">No stored analysis plots were found'
                f"{' in the folders searched' if folders else ''}.{where} "
                f"<code>{esc(PLOT_COMMAND)}</code> writes them (into <code>results/plots</code> "
                "by default); <code>python -m bench leaderboard --format html --plots FOLDER"
                "</code> embeds another folder.</p>")
    return (f'{head}<p class="note">{len(found)} plot{"s" * (len(found) != 1)} found, '
            f'embedded in this page; folders searched:</p><ul class="searched">{searched}</ul>'
            + "".join(_figure(p, d) for p, d in found))
