import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# The test models are tiny: one intra-op thread is as fast and immune to the erratic
# slow-downs of OpenMP spinning when the 2 cores are shared with other processes.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHIPPED = ROOT / "data"  # the same MIT-licensed files, shipped with the project (data/README.md)


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not a package), with ``scripts/`` on the path."""
    import importlib.util
    import sys

    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(f"mmsae_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def threads():
    """``threads(n)`` sets torch's intra-op thread count for the test, restored afterwards."""
    prev = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(prev)


@pytest.fixture
def two_threads(threads):
    """Two intra-op threads for the test (restored afterwards)."""
    threads(2)


@pytest.fixture(scope="session")
def coco500_path() -> Path:
    p = SHIPPED / "clip_vitb16_coco500.npy"
    if not p.exists():
        pytest.skip(f"{p} not found: the team's shared real-embedding data lies beside the project only in CI "
                    "and on the team's machines")
    return p


@pytest.fixture(scope="session")
def coco500_random_path() -> Path:
    p = SHIPPED / "clip_vitb16_random_coco500.npy"
    if not p.exists():
        pytest.skip(f"{p} not found (shared negative-control data)")
    return p


@pytest.fixture
def browser():
    """A headless Chromium Selenium webdriver (tests/browser_helpers.py), quit after the test.
    Skips when chromium, chromedriver or selenium is missing; fails instead under MMSAE_REQUIRE_BROWSER=1."""
    from browser_helpers import headless_chromium

    with headless_chromium() as driver:
        yield driver


def pytest_collection_modifyitems(config, items):
    """The end-to-end notebook tests first (stable order otherwise): under ``scripts/test.sh``'s
    two pytest-xdist workers (``--dist loadfile``: a file's tests, and its module fixtures, stay on
    one worker) the few long files then start at once and the many short ones fill in around them,
    instead of one long file starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("notebooks") is None)
