"""The leaderboard page's inline style sheet and script (:mod:`bench.report.page`), kept apart
from the page's structure so that each reads on its own.

The script makes every ``table.sortable`` sort on a click of a header (numbers by value: a
cell's ``data-v`` when it has one, else its text read as a number where it is one; empty cells
and ``–`` last in either direction; ties keep their order) and marks the table
``sortable-ready``. ``?sort=TABLE_ID:COLUMN[:desc]`` sorts a table on load, ``?open=all`` opens
every ``<details>``, and a ``#id`` naming a ``<details>`` opens it. In a chart
(``svg.chart``), hovering a line or a legend entry (``data-s``) fades the other defenses, and
a click keeps the choice until the next click. Nothing is loaded.
"""

from __future__ import annotations

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: .5em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; white-space: nowrap; }
th { background: #eef0f3; cursor: pointer; position: sticky; top: 0; white-space: normal;
     text-align: center; max-width: 11em; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.name, td.text, .dataframe td:nth-child(-n+4) { text-align: left; }
td.text { white-space: normal; }
th.headline { background: #f5d76e; }
td.headline { background: #fff4c9; font-weight: 700; font-size: 1.1em; }
td.headline .ci { font-weight: 400; font-size: .78em; color: #555; }
td.rank { font-weight: 600; }
.headline { border-left: 2px solid #b8860b; border-right: 2px solid #b8860b; }
.flag { display: inline-block; background: #c0392b; color: #fff; border-radius: 3px;
        padding: 0 .35em; font-size: .85em; font-weight: 600; cursor: help; }
.flag.unused { background: #bbb; }
dd.unused { color: #888; }
dl.legend { display: grid; grid-template-columns: max-content 1fr; gap: .2em .8em;
            max-width: 70em; }
dd { margin: 0; }
details dl { display: grid; grid-template-columns: 9em 1fr; gap: .3em; }
details.defense { border: 1px solid #ddd; border-radius: 4px; margin: .4em 0; padding: .4em .8em; }
summary { cursor: pointer; }
.score { color: #555; margin: 0 .6em; }
.scroll { overflow-x: auto; }
p.caption, p.note { max-width: 70em; color: #444; }
code { background: #f4f4f4; padding: 0 .25em; margin-right: .3em; font-size: .9em; }
figure { margin: 1em 0; }
figure.chart-figure { overflow-x: auto; }
figure.chart-figure figcaption { font-weight: 600; margin-bottom: .2em; }
svg.chart text { fill: #222; }
svg.chart .series, svg.chart .legend-item { transition: opacity .15s; }
svg.chart .legend-item[data-s], svg.chart .series { cursor: pointer; }
svg.chart.focused .series:not(.focus), svg.chart.focused .legend-item[data-s]:not(.focus)
  { opacity: .15; }
svg.chart.focused .series.focus path.line { stroke-width: 3; }
ul.searched { margin: .2em 0 .6em; }
p.empty { background: #f6f6f6; border-left: 4px solid #bbb; padding: .5em .8em; }
img { max-width: 100%; }
figure.plot img { max-width: min(100%, 60em); }
nav a { margin-right: 1em; }
"""

SCRIPT = r"""
(function () {
  function key(td) {
    if (!td) return "";
    var v = td.getAttribute("data-v");
    if (v !== null) return +v;
    var t = td.textContent.trim(), s = t.replace(/[%†‡,]/g, "");
    if (t === "" || t === "–") return "";
    return /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(s) ? +s : t.toLowerCase();
  }
  function cmp(a, b) {
    var na = typeof a === "number", nb = typeof b === "number";
    if (na && nb) return a - b;
    if (na || nb) return na ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function sortBy(table, col, desc) {
    var body = table.tBodies[0];
    if (!body) return;
    var rows = Array.prototype.map.call(body.rows, function (r, i) {
      return {r: r, k: key(r.cells[col]), i: i};
    });
    rows.sort(function (x, y) {
      var bx = x.k === "", by = y.k === "";
      if (bx || by) return (bx - by) || x.i - y.i;
      var c = cmp(x.k, y.k);
      return (desc ? -c : c) || x.i - y.i;
    });
    rows.forEach(function (x) { body.appendChild(x.r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, j) {
      th.removeAttribute("aria-sort");
      if (j === col) th.setAttribute("aria-sort", desc ? "descending" : "ascending");
    });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, j) {
      th.addEventListener("click", function () {
        sortBy(table, j, th.getAttribute("aria-sort") === "ascending");
      });
    });
    table.classList.add("sortable-ready");
  });
  var query = new URLSearchParams(location.search);
  var sort = (query.get("sort") || "").split(":");
  var target = sort[0] && document.getElementById(sort[0]);
  if (target) sortBy(target, parseInt(sort[1] || "0", 10), sort[2] === "desc");
  if (query.get("open") === "all") {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  }
  function openHash() {
    var el = location.hash && document.getElementById(location.hash.slice(1));
    if (el && el.tagName === "DETAILS") el.open = true;
  }
  window.addEventListener("hashchange", openHash);
  openHash();
  // charts: a line or legend entry picks out one defense (hover; a click keeps it picked)
  document.querySelectorAll("svg.chart").forEach(function (svg) {
    var pinned = null;
    function focus(s) {
      svg.classList.toggle("focused", s !== null);
      svg.querySelectorAll("[data-s]").forEach(function (el) {
        el.classList.toggle("focus", s !== null && el.getAttribute("data-s") === s);
      });
    }
    svg.querySelectorAll("[data-s]").forEach(function (el) {
      var s = el.getAttribute("data-s");
      el.addEventListener("mouseenter", function () { if (pinned === null) focus(s); });
      el.addEventListener("mouseleave", function () { if (pinned === null) focus(null); });
      el.addEventListener("click", function () {
        pinned = pinned === s ? null : s;
        focus(pinned === null ? s : pinned);
      });
    });
  });
})();
"""
