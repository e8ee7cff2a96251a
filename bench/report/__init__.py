"""Leaderboards from the result store: the wide and long tables and the worst case
(:mod:`.tables`), the cell-identity labels (:mod:`.identity`) and the exports (:mod:`.export`)."""

from __future__ import annotations

from bench.report.export import caption, render, to_html, to_markdown, to_records
from bench.report.identity import column_label, identify
from bench.report.tables import FORMATS, LONG_COLUMNS, leaderboard, long_table, worst_case

__all__ = ["FORMATS", "LONG_COLUMNS", "caption", "column_label", "identify", "leaderboard",
           "long_table", "render", "to_html", "to_markdown", "to_records", "worst_case"]
