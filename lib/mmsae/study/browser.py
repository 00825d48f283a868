"""A self-contained, offline HTML "latent browser" for a trained sparse autoencoder.

:func:`write_latent_browser` writes ONE html file (inline CSS, JS and data; no CDN, no
external file, no network) in which every latent of a model is a table row that can be
searched, filtered by category, sorted and expanded to show its strongest activating
images (each shown by its captions: the images themselves are not in the file) and
captions. A "Compare methods" panel holds a per-method summary table and links lead
to the browsers of the other models of the same run.

The same inputs give a byte-identical file: the data is JSON with sorted keys and
floats rounded to 4 significant digits, with no timestamp and no absolute path.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from mmsae.data.store import atomic_write

from .palette import CATEGORY_COLORS

__all__ = ["write_latent_browser", "inline_browser", "column_digits", "CATEGORIES"]

CATEGORIES = ("both", "image_only", "text_only", "dead")
_COLUMNS = (("id", "Latent"), ("category", "Category"), ("modality_score", "Modality score"),
            ("fires_img", "Fires on images"), ("fires_txt", "Fires on texts"), ("name", "Name"))
_TIPS = {"modality_score": "mean activation on images / (on images + on texts): 1 = image only, 0 = text only",
         "fires_img": "number of images it fires on", "fires_txt": "number of texts it fires on"}


def _num(x: Any) -> float | int | None:
    """A JSON-safe number: None for None/NaN/inf, ints kept, floats to 4 significant digits."""
    if x is None:
        return None
    if isinstance(x, (int, np.integer, bool, np.bool_)):
        return int(x)
    x = float(x)
    return float(f"{x:.4g}") if math.isfinite(x) else None


def _strs(v: Any) -> list[str]:
    return [str(s) for s in v] if v is not None else []


def _latent(d: dict) -> dict:
    """One latent in the page's format; every optional key defaults to empty/None."""
    cat = str(d["category"])
    if cat not in CATEGORIES:
        raise ValueError(f"latent {d.get('id')}: category {cat!r} is not one of {CATEGORIES}")
    return {
        "id": int(d["id"]), "category": cat, "modality_score": _num(d.get("modality_score")),
        "fires_img": int(d.get("fires_img") or 0), "fires_txt": int(d.get("fires_txt") or 0),
        "name": str(d.get("name") or ""), "names_img": _strs(d.get("names_img")),
        "names_txt": _strs(d.get("names_txt")), "agreement": _num(d.get("agreement")),
        "top_images": [{"act": _num(t.get("act")), "captions": _strs(t.get("captions"))}
                       for t in d.get("top_images") or []],
        "top_captions": [{"act": _num(t.get("act")), "text": str(t.get("text", ""))}
                         for t in d.get("top_captions") or []],
    }


def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)) or (isinstance(v, (int, np.integer)) and not isinstance(v, bool)):
        v = _num(v)
        return "—" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
    return "—" if v is None else str(v)


def column_digits(values: list) -> int | None:
    """One precision for a whole column: None (not numeric), 0 (every value a whole number), 1 (a count averaged
    over seeds, any value of 10 or more) or 3 (shares, accuracies)."""
    nums = [float(v) for v in values if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(float(v))]
    given = [v for v in values if v is not None and not (isinstance(v, (float, np.floating)) and math.isnan(v))]
    if not nums or len(nums) < len(given):  # NaN (a metric a model cannot have) is shown as "—"
        return None
    if all(v.is_integer() for v in nums):
        return 0
    return 1 if max(abs(v) for v in nums) >= 10 else 3


def _compare_html(rows: list[dict] | None, columns: list[tuple[str, str]] | None) -> str:
    if not rows:
        return '<p class="muted">No method comparison was given for this run.</p>'
    columns = columns or [(k, k) for k in rows[0]]
    e = html.escape
    digits = {k: column_digits([r.get(k) for r in rows]) for k, _ in columns}

    def cell(r: dict, k: str) -> str:
        v, dg = r.get(k), digits[k]
        if dg is None or v is None or (isinstance(v, float) and not math.isfinite(v)):
            return _cell(v)
        return f"{float(v):.{dg}f}"

    head = "".join(f"<th>{e(str(h))}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(f'<td{"" if digits[k] is None else " class=num"}>{e(cell(r, k))}</td>'
                                    for k, _ in columns) + "</tr>\n" for r in rows)
    return f'<table id="compare-table"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>'


def _models_html(model: str, siblings: dict[str, str] | None) -> str:
    items = dict(siblings or {})
    items.setdefault(model, "")
    out = []
    for name, href in items.items():
        if name == model:
            out.append(f'<strong class="current" aria-current="page">{html.escape(name)}</strong>')
            continue
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^/|^\\", str(href)):
            raise ValueError(f"siblings[{name!r}] = {href!r}: give a relative href (the page must work offline)")
        out.append(f'<a class="sibling" href="{html.escape(str(href), quote=True)}">{html.escape(name)}</a>')
    return " ".join(out)


def write_latent_browser(path, *, title: str, model: str, latents: list[dict], comparison: list[dict] | None = None,
                         comparison_columns: list[tuple[str, str]] | None = None, siblings: dict[str, str] | None = None,
                         notes: str = "", shows: str = "", comparison_note: str = "") -> Path:
    """Write the latent browser of ``model`` to ``path`` (atomically) and return the path.

    ``latents``: one dict per latent with ``id``, ``category`` (``both``, ``image_only``,
    ``text_only`` or ``dead``), ``modality_score`` (None/NaN when it never fires),
    ``fires_img``, ``fires_txt`` and optionally ``name``, ``names_img``, ``names_txt``,
    ``agreement``, ``top_images`` (``[{"act", "captions"}]``) and ``top_captions``
    (``[{"act", "text"}]``); missing optional keys are treated as empty.
    ``comparison`` / ``comparison_columns``: rows and ``[(key, header)]`` of the
    "Compare methods" panel; ``siblings``: ``{model name: relative href}`` of the other
    models' browsers; ``notes``: a plain-text paragraph shown under the title; ``shows``: one
    sentence on what the examples are (captions standing for images, or the true concepts of
    synthetic data), shown in the header and above each latent's examples; ``comparison_note``:
    what the "Compare methods" table aggregates (the page adds this seed's own counts beside it).
    """
    data = {"model": str(model), "latents": [_latent(d) for d in latents], "shows": str(shows)}
    if len({d["id"] for d in data["latents"]}) != len(data["latents"]):
        raise ValueError("latents: two latents have the same id")
    js_data = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    js_data = js_data.replace("</", "<\\/").replace("<!--", "<\\u0021--")  # cannot close or confuse the <script>
    e = html.escape
    heads = "".join(f'<th data-key="{k}" tabindex="0" title="{e(_TIPS.get(k, "sort by " + h.lower()))}">{h}</th>'
                    for k, h in _COLUMNS)
    options = '<option value="all">all categories</option>' + "".join(
        f'<option value="{c}">{c.replace("_", " ")}</option>' for c in CATEGORIES)
    parts = {"TITLE": e(title), "NOTES": e(" ".join(t for t in (notes, shows) if t)),
             "MODELS": _models_html(model, siblings), "CNOTE": e(comparison_note),
             "COMPARE": _compare_html(comparison, comparison_columns), "HEADS": heads, "OPTIONS": options,
             "CSS": _CSS, "JS": _JS, "DATA": js_data}
    parts["CSS"] = _CSS.replace("%CHIPS%", " ".join(
        f".chip.{c} {{ background: {CATEGORY_COLORS[c]}; color: {'#1d2128' if c == 'dead' else '#fff'}; }}"
        for c in CATEGORIES))
    page = re.sub(r"%([A-Z]+)%", lambda m: parts[m.group(1)], _PAGE)  # one pass: inserted text is never rescanned
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>%CSS%</style>
</head>
<body>
<header>
<h1>%TITLE%</h1>
<p id="notes">%NOTES%</p>
<nav id="models">Models: %MODELS%</nav>
<button id="compare-toggle" type="button" aria-expanded="false" aria-controls="compare">Compare methods</button>
</header>
<section id="compare" hidden>
<h2>Compare methods</h2>
<p id="compare-note" class="muted">%CNOTE% <span id="page-counts"></span></p>
%COMPARE%
</section>
<main id="browser">
<div id="controls">
<input id="search" type="search" placeholder="search words or captions (a latent number finds that latent)" autocomplete="off" aria-label="search">
<select id="category" aria-label="category">%OPTIONS%</select>
<span id="count" aria-live="polite"></span>
</div>
<table id="latents">
<thead><tr>%HEADS%</tr></thead>
<tbody></tbody>
</table>
<button id="more" type="button" hidden>show more</button>
</main>
<script type="application/json" id="latent-data">%DATA%</script>
<script>%JS%</script>
</body>
</html>
"""

_CSS = """
:root { --fg: #1d2128; --muted: #6b7280; --line: #e3e6ea; --hover: #f4f6f9; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0 auto;
       max-width: 1200px; padding: 1rem 1.5rem; }
h1 { font-size: 1.35rem; margin: 0 0 .3rem; } h2 { font-size: 1.1rem; margin: .5rem 0; }
h4 { margin: .4rem 0 .15rem; font-size: .9rem; }
#notes { color: var(--muted); margin: 0 0 .5rem; max-width: 70em; }
#models { margin: .3rem 0 .6rem; } #models a, #models strong { margin-right: .6rem; }
#models .current { background: var(--accent); color: #fff; border-radius: 3px; padding: 0 .35rem; }
a { color: var(--accent); }
button { font: inherit; padding: .25rem .7rem; border: 1px solid var(--line); border-radius: 4px; background: #fff;
         cursor: pointer; }
button:hover { background: var(--hover); }
#compare { border: 1px solid var(--line); border-radius: 6px; padding: .5rem 1rem 1rem; margin: .6rem 0; overflow-x: auto; }
#controls { display: flex; gap: .6rem; align-items: center; margin: .8rem 0 .4rem; flex-wrap: wrap; }
#search { flex: 1 1 18rem; padding: .35rem .5rem; font: inherit; border: 1px solid #c8ccd2; border-radius: 4px; }
#category { font: inherit; padding: .3rem; } #count { color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .22rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
#latents thead th { position: sticky; top: 0; background: #fafbfc; cursor: pointer; user-select: none; white-space: nowrap; }
#latents th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: .7em; }
#latents th[aria-sort="descending"]::after { content: " \\25BC"; font-size: .7em; }
tr.latent { cursor: pointer; }
tr.latent:hover, tr.latent[aria-expanded="true"] { background: var(--hover); }
tr.details > td { background: #fbfbfd; padding: .3rem 1rem .6rem; } tr.details p { margin: 0 0 .3rem; }
.chip { display: inline-block; border-radius: 9px; padding: 0 .5rem; font-size: .8rem; color: #fff; }
%CHIPS%
.muted { color: var(--muted); }
.act { display: inline-block; min-width: 4.5em; color: var(--muted); font-variant-numeric: tabular-nums; }
.note { color: var(--muted); font-style: italic; } #more { margin: .6rem 0; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: .3rem 1.5rem; }
ul.tops { margin: 0; padding-left: 1.1rem; }
"""

_JS = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("latent-data").textContent);
const ALL = DATA.latents, PAGE = 300, CATS = ["both", "image_only", "text_only", "dead"];
const tbody = document.querySelector("#latents tbody"), search = document.getElementById("search");
const catSel = document.getElementById("category"), more = document.getElementById("more");
const NUMERIC = new Set(["id", "modality_score", "fires_img", "fires_txt"]);
const isWord = /[\p{L}\p{N}_]/u, open = new Set();
let sortKey = "id", sortDir = 1, shown = PAGE, matches = ALL, byRelevance = false;

for (const l of ALL) {
  const ex = l.top_captions.map(c => c.text);
  for (const im of l.top_images) ex.push(...im.captions);
  l._name = (l.name || "").toLowerCase();
  l._words = [...l.names_img, ...l.names_txt].join("\n").toLowerCase();
  l._hay = ex.join("\n").toLowerCase();
}

function hasWordPrefix(hay, q) {
  for (let i = hay.indexOf(q); i !== -1; i = hay.indexOf(q, i + 1)) {
    if (i === 0 || !isWord.test(hay[i - 1])) return true;
  }
  return false;
}
// relevance of a latent to the query: each term must occur; it scores 100 as the latent's number, 3 in its name,
// 2 among its top words, 1 in the captions of its examples only (names rank before caption matches)
function relevance(l, terms) {
  let score = 0;
  for (const t of terms) {
    if (/^#?\d+$/.test(t) && l.id === Number(t.replace("#", ""))) score += 100;
    else if (hasWordPrefix(l._name, t)) score += 3;
    else if (hasWordPrefix(l._words, t)) score += 2;
    else if (hasWordPrefix(l._hay, t)) score += 1;
    else return 0;
  }
  return terms.length ? score : 1;
}
function sortValue(l) {
  const v = l[sortKey];
  return sortKey === "category" ? CATS.indexOf(v) : sortKey === "name" ? (v || null) : v;
}
function compare(a, b) {
  if (byRelevance && a._score !== b._score) return b._score - a._score;
  const x = sortValue(a), y = sortValue(b);
  if (x === null && y === null) return a.id - b.id;
  if (x === null) return 1;   // missing values last, whatever the direction
  if (y === null) return -1;
  const c = typeof x === "string" ? x.localeCompare(y, "en", {numeric: true}) : x - y;
  return c !== 0 ? sortDir * c : a.id - b.id;
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
const fmt = (v, digits) => v === null || v === undefined ? "\u2014" : Number(v).toFixed(digits);

function latentRow(l) {
  const tr = el("tr", "latent");
  tr.dataset.id = l.id; tr.dataset.category = l.category; tr.tabIndex = 0;
  tr.setAttribute("aria-expanded", open.has(l.id) ? "true" : "false");
  tr.append(el("td", "num", String(l.id)));
  const td = el("td"); td.append(el("span", "chip " + l.category, l.category.replace("_", " "))); tr.append(td);
  tr.append(el("td", "num", fmt(l.modality_score, 3)), el("td", "num", String(l.fires_img)),
            el("td", "num", String(l.fires_txt)));
  const fallback = [...l.names_img.slice(0, 3), ...l.names_txt.slice(0, 3)].join(", ");
  tr.append(l.name ? el("td", "", l.name) : el("td", "muted", fallback || "\u2014"));
  tr.addEventListener("click", () => toggle(tr, l));
  tr.addEventListener("keydown", ev => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); toggle(tr, l); } });
  return tr;
}
function list(items, render) {
  const ul = el("ul", "tops");
  for (const it of items) { const li = el("li"); render(li, it); ul.append(li); }
  return ul;
}
function detailsRow(l) {
  const tr = el("tr", "details"), td = el("td"), cols = el("div", "cols");
  tr.dataset.id = l.id; td.colSpan = 6;
  const imgs = el("div"), caps = el("div"), words = el("div");
  imgs.append(el("h4", "", "Top images"));
  if (DATA.shows) imgs.append(el("p", "note", DATA.shows));
  if (l.top_images.length) imgs.append(list(l.top_images, (li, im) => {
    li.append(el("span", "act", fmt(im.act, 3)), el("span", "muted", "image \u2014 "),
              document.createTextNode(im.captions.length ? im.captions.join(" / ") : "(no captions)"));
  })); else imgs.append(el("p", "muted", "none recorded"));
  caps.append(el("h4", "", "Top captions"));
  if (l.top_captions.length) caps.append(list(l.top_captions, (li, c) => {
    li.append(el("span", "act", fmt(c.act, 3)), document.createTextNode(c.text));
  })); else caps.append(el("p", "muted", "none recorded"));
  words.append(el("h4", "", "Top words, image side"), el("p", "", l.names_img.join(", ") || "\u2014"),
               el("h4", "", "Top words, text side"), el("p", "", l.names_txt.join(", ") || "\u2014"),
               el("h4", "", "Agreement of the two sides"), el("p", "", fmt(l.agreement, 2)));
  cols.append(imgs, caps, words); td.append(cols); tr.append(td);
  return tr;
}
function toggle(tr, l) {
  const next = tr.nextElementSibling;
  if (open.has(l.id)) {
    open.delete(l.id);
    if (next && next.classList.contains("details")) next.remove();
  } else {
    open.add(l.id);
    tr.after(detailsRow(l));
  }
  tr.setAttribute("aria-expanded", open.has(l.id) ? "true" : "false");
}

function render() {
  const frag = document.createDocumentFragment();
  for (const l of matches.slice(0, shown)) {
    frag.append(latentRow(l));
    if (open.has(l.id)) frag.append(detailsRow(l));
  }
  if (!matches.length) {
    const tr = el("tr", "empty"), td = el("td", "muted");
    td.colSpan = 6;
    const q = search.value.trim(), c = catSel.value;
    td.textContent = "No latent matches" + (q ? " \u201c" + q + "\u201d" : "") +
      (c !== "all" ? " among the " + c.replace("_", " ") + " latents" : "") + ". Try another word or all categories.";
    tr.append(td); frag.append(tr);
  }
  tbody.replaceChildren(frag);
  document.getElementById("count").textContent = matches.length + " of " + ALL.length + " latents" +
    (byRelevance ? ", best matches first (name, then top words, then captions)" : "");
  const left = matches.length - Math.min(shown, matches.length);
  more.hidden = left <= 0;
  more.textContent = "show more (" + left + " more)";
  for (const th of document.querySelectorAll("#latents th[data-key]")) {
    if (th.dataset.key === sortKey) th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
}
function update() {
  const terms = search.value.toLowerCase().split(/\s+/).filter(Boolean), cat = catSel.value;
  for (const l of ALL) l._score = relevance(l, terms);
  matches = ALL.filter(l => (cat === "all" || l.category === cat) && l._score > 0);
  byRelevance = terms.length > 0;
  matches.sort(compare);
  shown = PAGE;
  render();
}

search.addEventListener("input", update);
catSel.addEventListener("change", update);
more.addEventListener("click", () => { shown += PAGE; render(); });
for (const th of document.querySelectorAll("#latents th[data-key]")) {
  const sortBy = () => {
    if (sortKey === th.dataset.key) sortDir = -sortDir; else { sortKey = th.dataset.key; sortDir = 1; }
    byRelevance = false;  // a column the reader sorts by wins over relevance
    matches.sort(compare);
    render();
  };
  if (NUMERIC.has(th.dataset.key)) th.classList.add("num");
  th.addEventListener("click", sortBy);
  th.addEventListener("keydown", ev => { if (ev.key === "Enter") sortBy(); });
}
const counts = {};
for (const l of ALL) counts[l.category] = (counts[l.category] || 0) + 1;
document.getElementById("page-counts").textContent = "This page's latents: " +
  CATS.map(c => c.replace("_", " ") + " " + (counts[c] || 0)).join(", ") + ".";
const toggleBtn = document.getElementById("compare-toggle"), panel = document.getElementById("compare");
toggleBtn.addEventListener("click", () => {
  panel.hidden = !panel.hidden;
  toggleBtn.setAttribute("aria-expanded", String(!panel.hidden));
});
update();
"""


def inline_browser(path: str | Path):
    """A latent browser shown inside a notebook (an iframe whose ``srcdoc`` is the page: it works from the file,
    without a server; JupyterLab runs its script when the notebook is trusted)."""
    import warnings

    from IPython.display import HTML, display

    page = Path(path).read_text(encoding="utf-8")
    with warnings.catch_warnings():  # IPython suggests IFrame, which needs a served URL
        warnings.simplefilter("ignore", UserWarning)
        display(HTML(f'<iframe srcdoc="{html.escape(page)}" style="width:100%;height:520px;border:1px solid #ccc">'
                     "</iframe>"))
