"""The README's numbers are the code's: every generated section equals what scripts/update_readme.py
makes from the committed results, and none is a placeholder."""

import re
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ur():
    return load_script("update_readme")


def _sections(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in
            re.finditer(r"<!-- results:(\w+):begin -->\n(.*?)\n<!-- results:\1:end -->", text, re.S)}


def test_every_generated_section_is_in_step_with_the_results(ur):
    found = {}
    for doc in ur.FILES:
        for name, body in _sections(doc.read_text()).items():
            found.setdefault(name, []).append((doc.relative_to(ROOT), body))
    assert set(found) >= set(ur.SECTIONS) - {"runtime"}, "a section of update_readme.py has no markers in its files"
    for name, where in found.items():
        for doc, body in where:
            assert "Not generated yet" not in body, f"{doc}: section {name!r} is a placeholder"
            if name == "runtime":  # wall times: rewritten only with --runtime (they differ between runs)
                continue
            assert body == ur.SECTIONS[name](), (f"{doc}: section {name!r} differs from what scripts/update_readme.py "
                                                 "makes of results/: run it and commit")


def test_front_page_carries_the_claims_and_is_short():
    text = (ROOT / "README.md").read_text()
    assert text.index("results:claims:begin") < text.index("## What makes the dictionary shared")
    assert len(text) < 46_505 / 3, f"README.md is {len(text)} characters: the front page must stay short"
    for para in re.split(r"\n\s*\n", re.sub(r"<!--.*?-->", "", text, flags=re.S)):
        if not para.lstrip().startswith(("|", "```", "!", "-", "<")):
            assert len(para) <= 650, f"a README paragraph of {len(para)} characters: {para[:80]}..."


def test_speed_summary_names_the_machine_and_its_sgemm_peak(ur):
    import pandas as pd

    b = pd.read_csv(ROOT / "results" / "benchmarks.csv")
    text = ur.speedmachine_section()
    for g in b[b["method"] == "sgemm-peak"]["gflops"]:
        assert f"{g:.0f} GFLOP/s" in text
    assert b["device_desc"].iloc[0] in text
