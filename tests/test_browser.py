"""The offline HTML latent browser (mmsae.study.browser): its file, and its behaviour in headless Chromium."""

import json
import re

import numpy as np
import pytest

from mmsae.study.browser import write_latent_browser

CATS = ("both", "image_only", "text_only", "dead")
NASTY = "</script><b>x</b> & <!-- not a comment"
COMPARISON = [{"method": "GSAE", "r2": 0.912345678, "dead": 3}, {"method": "TopK SAE", "r2": 0.8, "dead": None}]
COLUMNS = [("method", "Method"), ("r2", "R²"), ("dead", "Dead latents")]


def make_latents(n=40):
    """Hand-made latents: category cycles with the id (3, 7, 11, ... are dead); 5 and 6 are about giraffes, 9 only contains the
    letters "giraffe" inside a word, 12 has no optional key at all, 20 has a caption that tries to break out."""
    out = []
    for i in range(n):
        cat = CATS[i % 4]
        dead = cat == "dead"
        lat = {"id": i, "category": cat, "modality_score": None if dead else np.float32((i * 13 % 40) / 40),
               "fires_img": 0 if dead or cat == "text_only" else (i * 7) % 40 + 1,
               "fires_txt": 0 if dead or cat == "image_only" else np.int64((i * 11) % 40 + 1)}
        if i != 12 and not dead:
            lat.update({"name": f"concept {i}", "names_img": [f"dog{i}", "beach"], "names_txt": [f"cat{i}"],
                        "agreement": 0.5, "top_images": [{"act": 2.0 + i / 7, "captions": [f"a dog number {i}"]}],
                        "top_captions": [{"act": 1.23456789, "text": f"a cat number {i}"}]})
        out.append(lat)
    out[5]["top_captions"] = [{"act": 3.5, "text": "A giraffe eating leaves"}, {"act": 2.0, "text": "a tall animal"}]
    out[6]["top_images"] = [{"act": 4.0, "captions": ["Two Giraffes near a fence", "animals in a zoo"]}]
    out[9]["top_captions"] = [{"act": 1.0, "text": "a nongiraffe thing"}]
    out[20]["top_captions"] = [{"act": 1.0, "text": NASTY}]
    out[30]["name"] = "giraffe herd"  # named after the word: ranks before the latents whose captions only mention it
    return out


def write(path, latents=None, **kw):
    args = dict(title="GSAE <latents> & co", model="gsae", latents=make_latents() if latents is None else latents,
                comparison=COMPARISON, comparison_columns=COLUMNS,
                siblings={"gsae": "gsae.html", "topk": "topk.html"}, notes="<i>n</i> & the notes",
                shows="Each image is shown by its captions (the images themselves are not included).",
                comparison_note="Means over 3 seeds; the list below is seed 0.")
    args.update(kw)
    return write_latent_browser(path, **args)


def embedded_data(text):
    m = re.search(r'<script type="application/json" id="latent-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


# ------------------------------------------------------------------ the file itself (no browser)
def test_file_is_deterministic_offline_and_escaped(tmp_path):
    a, b = write(tmp_path / "a.html"), write(tmp_path / "b.html")
    assert a.read_bytes() == b.read_bytes()
    write(a)  # rewriting the same path gives the same bytes and leaves no temporary file
    assert a.read_bytes() == b.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html"]
    text = a.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|@import|url\(", text, re.I)
    assert "NaN" not in text and str(tmp_path) not in text
    assert "<i>n</i>" not in text and "&lt;i&gt;n&lt;/i&gt; &amp; the notes" in text
    # the caption cannot close the data <script>: the embedded JSON parses and gives the caption back
    assert NASTY not in text and "<\\/script><b>" in text
    data = embedded_data(text)
    lat = {d["id"]: d for d in data["latents"]}
    assert len(lat) == 40 and lat[20]["top_captions"][0]["text"] == NASTY
    assert lat[3]["modality_score"] is None and lat[1]["top_captions"][0]["act"] == 1.235  # 4 significant digits
    assert lat[12] == {"id": 12, "category": "both", "modality_score": 0.9, "fires_img": 5, "fires_txt": 13, "name": "", "names_img": [], "names_txt": [], "agreement": None,
                       "top_images": [], "top_captions": []}


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="relative href"):
        write(tmp_path / "x.html", siblings={"topk": "https://example.org/topk.html"})
    with pytest.raises(ValueError, match="category"):
        write(tmp_path / "x.html", latents=[{"id": 0, "category": "sometimes", "fires_img": 1, "fires_txt": 0}])
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ in headless Chromium
def _ids(driver):
    return driver.execute_script(
        "return [...document.querySelectorAll('#latents tbody tr.latent')].map(r => Number(r.dataset.id))")


def _count(driver):
    return driver.find_element("id", "count").text


def test_browser_page(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    latents = make_latents()
    page = write(tmp_path / "gsae.html", latents)
    browser.get(page.as_uri())
    assert browser.title == "GSAE <latents> & co"
    assert browser.find_element(By.ID, "notes").text == ("<i>n</i> & the notes Each image is shown by its captions "
                                                         "(the images themselves are not included).")
    assert _count(browser) == "40 of 40 latents" and _ids(browser) == list(range(40))

    # search: word prefix, case-insensitive, over names, top words, top captions and top images' captions; the
    # latent named after the word first, then the caption matches (by id)
    search = browser.find_element(By.ID, "search")
    search.send_keys("giraffe")
    assert _ids(browser) == [30, 5, 6] and _count(browser).startswith("3 of 40 latents, best matches first")
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE)
    assert _count(browser) == "40 of 40 latents" and len(_ids(browser)) == 40
    search.send_keys("DOG1")  # names_img dog1, dog10..dog19
    assert _ids(browser) == [d["id"] for d in latents if any(w.startswith("dog1") for w in d.get("names_img", []))]
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE)
    search.send_keys("zebra")  # no latent: the table says so
    assert _ids(browser) == [] and "No latent matches \u201czebra\u201d" in browser.find_element(By.ID, "latents").text
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE)

    # category filter
    select = Select(browser.find_element(By.ID, "category"))
    for cat in CATS:
        select.select_by_value(cat)
        want = [d["id"] for d in latents if d["category"] == cat]
        assert _ids(browser) == want and _count(browser) == f"{len(want)} of 40 latents"
        assert {r.get_attribute("data-category") for r in browser.find_elements(By.CSS_SELECTOR, "tr.latent")} == {cat}
    select.select_by_value("all")
    assert len(_ids(browser)) == 40

    # sorting by clicking headers; a second click reverses; missing scores stay last
    fires = {d["id"]: int(d["fires_img"]) for d in latents}
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="fires_img"]').click()
    assert _ids(browser) == sorted(fires, key=lambda i: (fires[i], i))
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="fires_img"]').click()
    assert _ids(browser) == sorted(fires, key=lambda i: (-fires[i], i))
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="modality_score"]').click()
    ids = _ids(browser)
    assert ids[-10:] == [i for i in range(40) if latents[i]["category"] == "dead"]
    scores = [float(latents[i]["modality_score"]) for i in ids[:30]]
    assert scores == sorted(scores)
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="id"]').click()
    assert _ids(browser) == list(range(40))

    # a click on a row opens its details; a second click closes them
    row = browser.find_element(By.CSS_SELECTOR, 'tr.latent[data-id="5"]')
    row.click()
    details = browser.find_elements(By.CSS_SELECTOR, "tr.details")
    assert len(details) == 1 and details[0].get_attribute("data-id") == "5"
    text = details[0].text
    assert "A giraffe eating leaves" in text and "3.500" in text and "the images themselves are not included" in text
    assert "dog5, beach" in text and "cat5" in text and "a dog number 5" in text
    row.click()
    assert not browser.find_elements(By.CSS_SELECTOR, "tr.details")

    # the caption that tries to break out shows as text and creates no element
    browser.find_element(By.CSS_SELECTOR, 'tr.latent[data-id="20"]').click()
    assert NASTY in browser.find_element(By.CSS_SELECTOR, 'tr.details[data-id="20"]').text
    assert not browser.find_elements(By.TAG_NAME, "b") and not browser.find_elements(By.TAG_NAME, "i")
    # the latent without captions opens too
    browser.find_element(By.CSS_SELECTOR, 'tr.latent[data-id="12"]').click()
    assert "none recorded" in browser.find_element(By.CSS_SELECTOR, 'tr.details[data-id="12"]').text

    # compare panel: hidden, one click away
    panel = browser.find_element(By.ID, "compare")
    assert not panel.is_displayed()
    browser.find_element(By.ID, "compare-toggle").click()
    assert panel.is_displayed()
    cells = [c.text for c in panel.find_elements(By.CSS_SELECTOR, "tbody td")]
    assert cells == ["GSAE", "0.912", "3", "TopK SAE", "0.800", "—"]  # one precision per column
    note = browser.find_element(By.ID, "compare-note").text  # what the table averages, and this page's own counts
    assert note.startswith("Means over 3 seeds") and "This page's latents: both 10, image only 10, text only 10, " \
        "dead 10." in note
    assert [h.text for h in panel.find_elements(By.TAG_NAME, "th")] == ["Method", "R²", "Dead latents"]

    # the other model is a link, the current one is highlighted and not a link
    links = browser.find_elements(By.CSS_SELECTOR, "#models a")
    assert [(a.text, a.get_attribute("href")) for a in links] == [("topk", (tmp_path / "topk.html").as_uri())]
    assert browser.find_element(By.CSS_SELECTOR, "#models .current").text == "gsae"


def test_browser_without_captions_pages_and_filters(tmp_path, browser):
    """Data without captions: only id, category, modality score and counts; 700 latents page by 300."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rng = np.random.default_rng(0)
    cats = rng.choice(CATS, 700)
    latents = [{"id": i, "category": str(c), "modality_score": float("nan") if c == "dead" else rng.random(),
                "fires_img": int(rng.integers(0, 99)), "fires_txt": int(rng.integers(0, 99))}
               for i, c in enumerate(cats)]
    page = write_latent_browser(tmp_path / "plain.html", title="plain", model="m", latents=latents)
    browser.get(page.as_uri())
    assert _count(browser) == "700 of 700 latents" and _ids(browser) == list(range(300))
    more = browser.find_element(By.ID, "more")
    more.click()
    assert len(_ids(browser)) == 600
    more.click()
    assert _ids(browser) == list(range(700)) and not more.is_displayed()

    Select(browser.find_element(By.ID, "category")).select_by_value("image_only")
    want = [i for i, c in enumerate(cats) if c == "image_only"]
    assert _ids(browser) == want and _count(browser) == f"{len(want)} of 700 latents"
    browser.find_element(By.CSS_SELECTOR, f'tr.latent[data-id="{want[0]}"]').click()
    assert "none recorded" in browser.find_element(By.CSS_SELECTOR, "tr.details").text
    browser.find_element(By.ID, "compare-toggle").click()
    assert "No method comparison" in browser.find_element(By.ID, "compare").text


def test_category_colours_are_the_figures(tmp_path):
    """The chips of the browser use the categories' palette of every figure (mmsae.study.palette), which no
    method's colour repeats."""
    from mmsae.study.palette import CATEGORY_COLORS
    from mmsae.study.plots import MODEL_COLORS

    text = write(tmp_path / "p.html").read_text(encoding="utf-8")
    for cat, colour in CATEGORY_COLORS.items():
        assert f".chip.{cat} {{ background: {colour};" in text
    assert not set(CATEGORY_COLORS.values()) & set(MODEL_COLORS.values())


def test_column_digits():
    from mmsae.study.browser import column_digits

    assert column_digits([98, 20.666, 112.3]) == 1 and column_digits([0.1234, 0.5]) == 3
    assert column_digits([3, None]) == 0 and column_digits(["GSAE", "SAE"]) is None
