"""The HTML leaderboard page, on a synthetic store written through the real schema: its structure
checked in Python, then rendered by headless Chromium (screenshot and the DOM after its script)."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.report.page as page_module
from bench.report import leaderboard, render
from bench.report.interval import wilson
from bench.report.page import build_page, paper
from bench.store import CellResult, Store

EPS = 8 / 255
FLAG = {"code": "ZG", "title": "zero input gradients",
        "detail": "31 of 200 images (15.5%) have an all-zero input gradient"}
LEGEND = {"ZG": "Gradients vanish on many images: gradient attacks may fail for that reason "
                "alone.", "NM": "Robust accuracy does not fall as eps grows."}


def _cell(defense: str, attack: str, threat: str, robust: list[int], clean: list[int] | None = None,
          **fields: object) -> CellResult:
    n = len(robust)
    cell = CellResult(
        config_hash=f"{defense}-{attack}-{threat}", dataset="digits", split="test", n=n,
        model="cnn", defense=defense, defense_kind="preprocessor", attack=attack, threat=threat,
        norm="linf", eps=float(fields.pop("eps", EPS)), seed=0,
        clean_correct=np.array(clean or [1] * n, dtype=np.uint8),
        robust_correct=np.array(robust, dtype=np.uint8), wall_time=2.5, device="cpu",
        git_rev="abc1234", attack_params={"steps": 100}, versions={"torch": "2.3.1"})
    for key, value in fields.items():
        setattr(cell, key, value)
    return cell


def _png(width: int = 160, height: int = 60) -> bytes:
    """A real PNG (8-bit grey gradient) built by hand: signature, IHDR, IDAT, IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(x * 255 // width for x in range(width)) for _ in range(height))
    header = struct.pack(">2I5B", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.fixture
def frame(tmp_path: Path) -> pd.DataFrame:
    """The baseline, a BPDA defense (jpeg), an EOT defense (randomization), a suite cell on a
    trained defense (dunet) and a defense no longer registered."""
    store = Store(tmp_path / "bench.sqlite")
    suite = {"suite": {"members": [{"label": "apgd-ce"}, {"label": "square"}],
                       "first_break": [1, 2, None, None]}}
    cells = [
        _cell("none", "pgd100", "whitebox", [0, 0, 0, 1]),
        _cell("jpeg", "pgd100", "whitebox", [1, 0, 1, 1], bpda=True,
              defense_params={"quality": 75, "note": "<b>x</b>"}),
        _cell("jpeg", "fgsm", "oblivious", [1, 1, 1, 1], defense_params={"quality": 75,
                                                                          "note": "<b>x</b>"}),
        _cell("randomization", "pgd100", "whitebox", [1, 1, 0, 1], config={"eot": 20},
              metadata={"eot": 20, "scaled": "paper 299->331 px scaled to 28->31"}),
        _cell("dunet", "adaptive", "whitebox", [0, 0, 1, 1], metadata={
            **suite, "fit": {"epochs": 2, "scaled_from_paper": "2 epochs, not 20-30"}}),
        _cell("retired-def", "fgsm", "oblivious", [1, 0, 1, 1], clean=[1, 1, 1, 0]),
    ]
    for c in cells:
        store.add(c)
    return store.frame()


@pytest.fixture
def flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wide table with flags as the flags module attaches them (``attrs["flags"]`` and
    ``attrs["flag_legend"]``)."""
    def with_flags(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
        wide = leaderboard(df, baseline)
        wide.attrs.update(flags={"digits/cnn/jpeg": [FLAG]}, flag_legend=LEGEND)
        return wide
    monkeypatch.setattr(page_module, "leaderboard", with_flags)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    out = tmp_path / "site"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "amplification.png").write_bytes(_png())
    (out / "plots" / "broken.png").write_bytes(b"not a png")
    return out


def _section(page: str, table_id: str) -> str:
    return re.search(rf'<table id="{table_id}".*?</table>', page, re.S).group(0)


def _headers(table: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table)]


@pytest.mark.usefixtures("flagged")
def test_page_structure(frame: pd.DataFrame, site: Path) -> None:
    page = Path(render(frame, "html", out_dir=site, baseline="none")).read_text(encoding="utf-8")
    board = _section(page, "board")
    heads = _headers(board)
    assert heads[:7] == ["dataset", "model", "defense", "rank@8/255", "worst case@8/255",
                         "attacks@8/255", "flags"]
    assert heads.index("worst case@8/255") < heads.index("fgsm/oblivious@8/255")
    assert '<th class="headline"' in board and '<td data-v="0.75" class="headline">' in board
    # the headline with its 95% Wilson interval (3 of 4 images), the places (none unranked)
    assert '<td data-v="0.75" class="headline">75.0 <span class="ci">(30.1–95.4)</span></td>' \
        in board
    ranks = re.findall(r'<td(?: data-v="[^"]*")? class="rank">([^<]*)</td>', board)
    assert ranks == ["–", "1–4", "1–4", "1–4", "1–4"]
    # the flag, with its detail as a tooltip, and the legend of flags and marks
    assert f'title="zero input gradients: {FLAG["detail"]}">ZG</span>' in board
    assert LEGEND["ZG"] in page and "NM</span>" in page and "(not raised)" in page
    assert "75.0†" in board and "75.0‡" in board and 'title="EOT over 20 draws"' in board
    assert "BPDA: the defense" in page and "EOT: the attack" in page
    assert _headers(_section(page, "breakdown"))[-1] == "broken first by (images)"
    assert "adaptive/whitebox@8/255:apgd-ce 1" in page
    # one detail view per row: paper, parameters (escaped), scaled, provenance, its cells
    details = re.findall(r'<details class="defense" id="row-\d+">.*?</details>', page, re.S)
    assert len(details) == len(leaderboard(frame)) == 5
    jpeg = next(d for d in details if "digits/cnn/jpeg</b>" in d)
    assert "JPEG compression round trip" in jpeg and '<a href="https://arxiv.org/abs/' in jpeg
    assert "<code>quality=75</code>" in jpeg and "&lt;b&gt;x&lt;/b&gt;" in jpeg
    assert "<b>x</b>" not in page and "zero input gradients: 31 of 200" in jpeg
    assert "git abc1234" in jpeg and "<code>torch=2.3.1</code>" in jpeg
    assert "paper 299-&gt;331 px" in next(d for d in details if "randomization</b>" in d)
    dunet = next(d for d in details if "dunet</b>" in d)
    assert "2 epochs, not 20-30" in dunet and "apgd-ce, square" in dunet
    assert "not a registered defense now" in next(d for d in details if "retired-def" in d)
    # the plot embedded (the file that is not a PNG skipped), every cell, the sort script
    assert f'src="data:image/png;base64,{base64.b64encode(_png()).decode()}"' in page
    assert "broken.png" not in page
    assert re.search(r"<summary>6 cells, one line each", page)
    assert "<script>" in page and "sortable-ready" in page
    assert not re.search(r'(src|href)="(?!data:|#|https://arxiv)|<link|@import|fetch\(', page)


def test_page_with_the_real_flags(frame: pd.DataFrame) -> None:
    wide = leaderboard(frame, "none")
    page = build_page(frame, "none")
    assert "flags" in _headers(_section(page, "board"))
    for code in wide.attrs.get("flag_legend", {}):
        assert f">{code}</span>" in page


def test_page_without_flags_and_plots(frame: pd.DataFrame,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide table without ``flags`` attrs (as before the flags existed) renders without them."""
    def without(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
        wide = leaderboard(df, baseline)
        for key in ("flags", "flag_legend"):
            wide.attrs.pop(key, None)
        return wide
    monkeypatch.setattr(page_module, "leaderboard", without)
    page = build_page(frame, "none")
    assert "flags" not in _headers(_section(page, "board"))
    assert 'class="flag' not in page and "<img" not in page
    # no plot: the section says so plainly, with the command that writes them
    assert re.search(r'<h2 id="plots">Plots</h2><p class="note empty">No stored analysis plots '
                     r"were found\.", page)
    assert "python -m bench plot amplification|residual|sweep" in page
    nav = re.search(r"<nav>(.*?)</nav>", page).group(1)
    for target in re.findall(r'href="#([^"]+)"', nav):  # the contents name sections shown
        assert f'id="{target}"' in page


def test_paper_of_a_registered_and_an_unknown_defense() -> None:
    summary, cite = paper("at-pgd")
    assert summary.startswith("Madry et al.") and cite.startswith("Paper: Madry")
    assert cite.endswith("(https://arxiv.org/abs/1706.06083).")
    assert paper("no-such-defense") == ("", "")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def _browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--hide-scrollbars", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


@pytest.mark.slow
@pytest.mark.usefixtures("flagged")
def test_page_in_a_browser(frame: pd.DataFrame, site: Path, tmp_path: Path) -> None:
    path = Path(render(frame, "html", out_dir=site, baseline="none"))
    heads = _headers(_section(path.read_text(encoding="utf-8"), "board"))
    col = heads.index("worst case@8/255")
    dom = _browse(f"{path.as_uri()}?sort=board:{col}:desc", tmp_path / "p1", "--dump-dom").stdout
    board = _section(dom, "board")
    assert re.search(r'<table id="board" class="[^"]*\bsortable-ready\b', board)
    shown = [float(v) for v in re.findall(r'<td data-v="([^"]+)" class="headline">', board)]
    assert shown == sorted(shown, reverse=True) and len(shown) == 5
    assert 'aria-sort="descending"' in board
    shot = tmp_path / "leaderboard.png"
    _browse(f"{path.as_uri()}?open=all", tmp_path / "p2", f"--screenshot={shot}",
            "--window-size=1400,2000")
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


# The charts: a grid of nine defenses x two threat models x three eps on 10 images, robust
# flags made so that every line's numbers are known in advance.
NAMES = ("none", "bitdepth", "median", "jpeg", "randomization", "dae", "dunet", "lgd", "cgd")
GRID_EPS = (0.1, 0.2, 0.3)
THREATS = ("oblivious", "whitebox")


def _k(d: int, t: int, e: int) -> int:
    """How many of the 10 images (the first k) survive fgsm for defense d, threat t, eps e."""
    return max(0, 10 - d // 3 - 3 * e - 2 * t)


def _k2(e: int) -> int:
    """jpeg's second oblivious attack (pgd10) leaves the *last* k2 images standing."""
    return max(0, 8 - 3 * e)


def _expected(name: str, threat: str, e: int) -> float:
    """The per-image worst case a line must show (the intersections of prefixes/suffixes)."""
    d = NAMES.index(name)
    ks = [_k(d, t, e) for t, th in enumerate(THREATS) if threat in (th, "worst case")]
    prefix = min(ks)
    if name == "jpeg" and threat in ("oblivious", "worst case"):
        return max(0, prefix - (10 - _k2(e))) / 10
    return prefix / 10


@pytest.fixture
def grid(tmp_path: Path) -> pd.DataFrame:
    store = Store(tmp_path / "grid.sqlite")
    for d, name in enumerate(NAMES):
        clean = [1] * 9 + [0 if name == "randomization" else 1]
        for e, eps in enumerate(GRID_EPS):
            for t, threat in enumerate(THREATS):
                k = _k(d, t, e)
                cells = [("fgsm", [1] * k + [0] * (10 - k))]
                if name == "jpeg" and threat == "oblivious":
                    cells.append(("pgd10", [0] * (10 - _k2(e)) + [1] * _k2(e)))
                for attack, robust in cells:
                    c = _cell(name, attack, threat, robust, clean=clean, eps=eps,
                              config_hash=f"{name}-{attack}-{threat}-{eps}")
                    store.add(c)
    return store.frame()


def _svgs(page: str, cls: str) -> list[ET.Element]:
    """The page's inline ``<svg class="chart CLS">`` elements, parsed as XML."""
    return [ET.fromstring(m) for m in re.findall(rf'<svg class="chart {cls}".*?</svg>', page,
                                                 re.S)]


def _points(g: ET.Element) -> list[tuple[float, float]]:
    return [(float(p.get("data-eps")), float(p.get("data-acc"))) for p in g.iter()
            if "pt" in (p.get("class") or "").split()]


def test_eps_chart_has_one_line_per_defense_and_threat(grid: pd.DataFrame) -> None:
    page = build_page(grid, "none")
    (svg,) = _svgs(page, "eps-chart")
    assert (svg.get("data-dataset"), svg.get("data-model")) == ("digits", "cnn")
    series = svg.findall(".//g[@class='series']")
    lines = {(g.get("data-defense"), g.get("data-threat")): _points(g) for g in series}
    assert len(series) == len(lines) == len(NAMES) * 3  # per threat, plus the worst case
    assert set(lines) == {(n, t) for n in NAMES for t in (*THREATS, "worst case")}
    for (name, threat), points in lines.items():
        assert [e for e, _ in points] == [0.0, *GRID_EPS]  # clean, then every eps
        clean = 0.9 if name == "randomization" else 1.0
        want = [clean] + [_expected(name, threat, e) for e in range(len(GRID_EPS))]
        assert [a for _, a in points] == pytest.approx(want), (name, threat)
    for g in series:  # one path through the points: a segment to each eps
        (line,) = g.findall("path[@class='line']")
        assert line.get("d").count("M") == 1 and line.get("d").count("L") == len(GRID_EPS)
        # the headline's panel only: an error bar per eps, its 95% Wilson interval of 10 images
        bars = [(float(b.get("data-low")), float(b.get("data-high")))
                for b in g.findall("path[@class='ci']")]
        if g.get("data-threat") != "worst case":
            assert bars == []
            continue
        name = g.get("data-defense")
        assert bars == [tuple(wilson(round(10 * _expected(name, "worst case", e)), 10))
                        for e in range(len(GRID_EPS))], name
    # readable: labelled axes with the eps ticks, a legend entry per defense, the baseline black
    # and dashed, every other defense its own colour (9 defenses at 3 eps)
    texts = [t.text for t in svg.iter("text")]
    assert texts.count("robust accuracy (%)") == 3 and texts.count("eps (L∞)") == 3
    assert all(texts.count(tick) == 3 for tick in ("clean", "0.1", "0.2", "0.3"))
    legend = [g for g in svg.iter("g") if g.get("class") == "legend-item"]
    shown = [g.find("text").text for g in legend]
    assert shown[0] == "none (baseline)" and sorted(shown[1:]) == sorted(NAMES[1:])
    strokes = {g.get("data-defense"): g.find("path").get("stroke") for g in series
               if g.get("data-threat") == "worst case"}
    assert strokes["none"] == "#000000"
    assert next(g for g in series if g.get("data-defense") == "none").find("path").get(
        "stroke-dasharray")
    assert len({strokes[n] for n in NAMES}) == len(NAMES)


def test_breakdown_chart_matches_the_breakdown_table(grid: pd.DataFrame) -> None:
    page = build_page(grid, "none")
    (svg,) = _svgs(page, "breakdown-chart")
    wide = leaderboard(grid, "none")
    table = {(r.defense, r.eps): r for r in wide.attrs["breakdown"].itertuples()}
    bars = [g for g in svg.iter("g") if g.get("class") == "bar"]
    assert len(bars) == len(NAMES) * len(GRID_EPS)
    for bar in bars:
        name = bar.get("data-row").split("/")[-1]
        eps = float(bar.get("data-eps"))
        segs = [(r.get("data-cat"), int(r.get("data-count"))) for r in bar.findall("rect")]
        row = table[(name, eps)]
        assert sum(c for _, c in segs) == int(bar.get("data-n")) == row.n == 10
        assert segs[0] == ("robust", row.robust)
        # the table's "label count" items, without the eps every bar of the row holds
        items = [i.rsplit(" ", 1) for i in row.broken_by.split(", ")]
        want = [(label.replace(f"@{eps:g}", ""), int(k)) for label, k in items if int(k)]
        assert segs[1:] == want, (name, eps)
    none = next(b for b in bars if b.get("data-row") == "digits/cnn/none"
                and b.get("data-eps") == "0.1")
    assert [(r.get("data-cat"), r.get("data-count")) for r in none.findall("rect")] == [
        ("robust", "8"), ("fgsm/whitebox", "2")]


def test_page_references_nothing_outside_itself(frame: pd.DataFrame, site: Path) -> None:
    page = Path(render(frame, "html", out_dir=site, baseline="none")).read_text("utf-8")
    assert "<svg" in page and 'src="data:image/png;base64,' in page
    # nothing that a browser fetches: no external src, stylesheet, script, import or url()
    assert not re.search(r"<(link|script)\b[^>]*\b(src|href)=|@import|url\(|\bsrc=\"(?!data:)",
                         page)
    # the only web addresses are the papers' links, followed when clicked: none is left once
    # they are taken out (the SVG charts name no namespace URL either)
    links = r'<a href="https?://[^"]+" rel="noreferrer">https?://[^<]+</a>'
    assert len(re.findall(links, page)) >= 2
    assert not re.search(r"https?://", re.sub(links, "", page))


def test_plots_section_lists_what_it_searched(frame: pd.DataFrame, site: Path,
                                             tmp_path: Path) -> None:
    (site / "plots" / "amplification.svg").write_text("<svg/>")
    page = build_page(frame, "none", site, plot_dirs=[site / "plots", tmp_path / "nowhere"])
    assert "1 plot found, embedded in this page" in page
    assert f"<code>{site / 'plots'}</code>: 1 PNG plot</li>" in page
    assert f"<code>{tmp_path / 'nowhere'}</code>: no such folder</li>" in page
    assert "amplification.png from" in page and "(beside it: amplification.svg)" in page
    empty = build_page(frame, "none", plot_dirs=[tmp_path / "nowhere"])
    assert "No stored analysis plots were found in the folders searched." in empty


_PROBE = """<script>
(function () {
  function column(j) {
    return Array.prototype.map.call(document.querySelectorAll("#board tbody tr"),
                                    function (r) { return r.cells[j].textContent.trim(); });
  }
  var th = document.querySelectorAll("#board thead th"), out = {};
  th[COL].click(); out.up = column(COL);
  th[COL].click(); out.down = column(COL);
  th[N].click(); out.n = column(N);
  th[NAME].click(); out.names = column(NAME);
  out.resources = performance.getEntriesByType("resource").map(function (e) { return e.name; });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


@pytest.mark.slow
def test_clicking_a_header_sorts_numbers_by_value_and_empty_cells_last(
        site: Path, tmp_path: Path) -> None:
    """A real click on a header in Chromium (a script appended after the page's own clicks
    the header and reads the rows back): numbers by value (n = 8 before 12, 62.5 before 100),
    cells without a number last in both directions, text alphabetically; nothing fetched."""
    store = Store(tmp_path / "sort.sqlite")
    for cell in (_cell("none", "fgsm", "oblivious", [1, 0, 0, 0]),  # rows over n = 4 ... 12
                 _cell("jpeg", "fgsm", "oblivious", [1] * 12),
                 _cell("median", "fgsm", "oblivious", [1] * 5 + [0] * 3),
                 _cell("bitdepth", "pgd100", "whitebox", [1, 1, 0, 0, 1, 1, 1, 1, 1]),
                 _cell("dunet", "pgd100", "whitebox", [0] * 10)):
        store.add(cell)
    page = Path(render(store.frame(), "html", out_dir=site, baseline="none")).read_text("utf-8")
    heads = _headers(_section(page, "board"))
    cols = {k: heads.index(h) for k, h in (("COL", "fgsm/oblivious@8/255"), ("N", "n"),
                                           ("NAME", "defense"))}
    probe = _PROBE
    for key, j in cols.items():
        probe = probe.replace(f"[{key}]", f"[{j}]").replace(f"({key})", f"({j})")
    probed = site / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = _browse(probed.as_uri(), tmp_path / "p3", "--dump-dom",
                  "--host-resolver-rules=MAP * ~NOTFOUND").stdout
    out = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)[1]))
    assert out["up"] == ["25.0", "62.5", "100.0", "–", "–"]
    assert out["down"] == ["100.0", "62.5", "25.0", "–", "–"]
    assert out["n"] == ["4", "8", "9", "10", "12"]  # not "10", "12", "4", ...
    assert out["names"] == ["bitdepth", "dunet", "jpeg", "median", "none"]
    assert [r for r in out["resources"] if not r.startswith("data:")] == []


def test_cli_embeds_the_plots_folder_it_is_given(frame: pd.DataFrame, site: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    out = tmp_path / "page"
    assert main(["leaderboard", "--results", str(tmp_path / "bench.sqlite"), "--format",
                 "html", "--out", str(out), "--plots", str(site / "plots")]) == 0
    page = Path(capsys.readouterr().out.strip()).read_text(encoding="utf-8")
    assert "amplification.png from" in page and "1 plot found" in page
    assert f"<code>{out / 'plots'}</code>" not in page  # --plots replaces the default folders
