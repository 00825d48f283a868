"""The README as a reader meets it: rendered like a repository page (1280 px window, a 1012 px content
column, the host's table rules) in headless Chromium. The claims table and the headline figure must
be on the first screen, no table may be wider than the column, and every image must load."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the repository page's layout, approximately: a centred column of 1012 px, 16 px text, tables as
# blocks that scroll when wider than the column (which is what this test forbids)
CSS = """
body { margin: 0; font: 16px/1.5 -apple-system, 'Segoe UI', 'Noto Sans', Helvetica, Arial, sans-serif; }
article { max-width: 1012px; margin: 24px auto; padding: 0 32px; box-sizing: border-box; }
h1 { font-size: 2em; padding-bottom: .3em; margin: .67em 0 16px; }
h2 { font-size: 1.5em; padding-bottom: .3em; margin: 24px 0 16px; }
p, pre, table, ul { margin: 0 0 16px; }
pre { padding: 16px; font-size: 85%; line-height: 1.45; overflow: auto; }
img { max-width: 100%; box-sizing: content-box; }
table { display: block; width: max-content; max-width: 100%; overflow: auto; border-spacing: 0;
        border-collapse: collapse; font-size: 14px; }
th, td { padding: 6px 13px; border: 1px solid #d0d7de; }
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").enable("table").render((ROOT / "README.md").read_text())
    out = tmp_path_factory.mktemp("front") / "README.html"
    out.write_text(f'<!doctype html><html><head><meta charset="utf-8"><base href="{ROOT.as_uri()}/">'
                   f"<style>{CSS}</style></head><body><article>{html}</article></body></html>")
    return out


def test_claims_and_headline_figure_on_the_first_screen(browser, page):
    browser.set_window_size(1280, 1000)
    browser.get(page.as_uri())
    top = browser.execute_script("""
        const img = document.querySelector('img'), table = document.querySelector('table');
        const loaded = Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);
        return {img: img.getBoundingClientRect().top, imgBottom: img.getBoundingClientRect().bottom,
                table: table.getBoundingClientRect().top, loaded: loaded,
                header: table.querySelector('th').textContent};""")
    assert top["loaded"], "an image of the README does not load"
    assert top["header"].startswith("claim"), "the first table of the README is not the claims table"
    assert top["imgBottom"] < 1000, f"the headline figure ends at {top['imgBottom']:.0f} px"
    assert top["table"] < 1000, f"the claims table starts at {top['table']:.0f} px"


def test_no_table_wider_than_the_page(browser, page):
    browser.set_window_size(1280, 1000)
    browser.get(page.as_uri())
    wide = browser.execute_script("""
        return Array.from(document.querySelectorAll('table'))
            .filter(t => t.scrollWidth > t.clientWidth + 1)
            .map(t => [t.querySelector('th').textContent, t.scrollWidth, t.clientWidth]);""")
    assert not wide, f"tables wider than the column (first header, width, column): {wide}"
