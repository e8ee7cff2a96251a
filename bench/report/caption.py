"""The leaderboard's caption: what the numbers are, on how many images, under which threat
models, and what produced them (shown under the Markdown table and atop the HTML page)."""

from __future__ import annotations

import pandas as pd

from bench.registry import natural_key
from bench.report.identity import identify
from bench.report.tables import _plain, _require, _threat_rank
from bench.threat import Threat

_THREAT_NOTES = {
    Threat.OBLIVIOUS.value: "the attack sees the classifier only",
    Threat.WHITEBOX.value: "adaptive, through the whole defended pipeline",
}
BPDA_MARK = "†"
EOT_MARK = "‡"


def caption(df: pd.DataFrame) -> str:
    """One line saying what the numbers are, on how many images, and what produced them."""
    df = _plain(_require(df))
    parts = []
    for (ds, split), g in df.groupby(["dataset", "split"], sort=False):
        lo, hi = int(g["n"].min()), int(g["n"].max())
        parts.append(f"{ds}/{split}: n = {lo}" + (f"–{hi}" if hi != lo else ""))
    threats = sorted(set(df["threat"]), key=_threat_rank)
    notes = [f"{t} ({_THREAT_NOTES[t]})" if t in _THREAT_NOTES else t for t in threats]
    revs = ", ".join(sorted(set(df["git_rev"].astype(str))))
    date = str(df["created_at"].max())[:10]
    marks = ([f"{BPDA_MARK} gradients through BPDA."] if df["bpda"].astype(bool).any() else [])
    if any(isinstance(c, dict) and "eot" in c for c in df["config"]):
        marks.append(f"{EOT_MARK} gradients averaged over random draws of the defense (EOT).")
    cells = identify(df)
    if ((cells["_label"] != cells["_column_base"]) | (cells["_model"] != cells["model"])
            | (cells["_defense"] != cells["defense"])).any():
        marks.append("Settings in parentheses distinguish rows or columns that share a name "
                     "(the CSV has every cell's full configuration).")
    attacks = ", ".join(sorted(set(df["attack"]), key=natural_key))
    return " ".join([
        f"Accuracy (%) of each defended classifier on n test images per cell "
        f"({'; '.join(parts)}). Attacks: {attacks}; threat models: {'; '.join(notes)}; "
        f"columns are attack/threat@eps (L-inf radius on the [0,1] scale).",
        *(["worst case@eps is the headline: the images correct clean and under every attack "
           "and threat model stored for the row at that eps (attacks@eps: how many, a suite's "
           "members counted); rows are sorted by it. In parentheses: its 95% Wilson score "
           "interval over the row's n images, which covers the sampling of the images, not the "
           "randomness of the attacks or of training. rank@eps, at the eps rows are sorted by: "
           "the places a row can hold in its dataset and model block, from 1 + the rows whose "
           "interval lies wholly above its own to the rows ranked minus those wholly below; "
           "rows whose intervals overlap share a place, so a range (2–3) marks rows not "
           "separated (each pair compared on its own, overlaps not chained; the baseline is "
           "not ranked)."] if len(df) else []), *marks,
        f"Produced by bench (git {revs}) on {date}."])
