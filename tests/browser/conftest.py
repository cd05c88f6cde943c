"""The browser for the browser tests: Debian chromium, headless, through Playwright.

A missing /usr/bin/chromium or playwright package fails every browser test with
what to install (`make browser` installs chromium, `make venv` playwright; `make
test` runs both): never a skip, so a run without a browser cannot pass as green.
Never a browser download.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"browser tests need Debian chromium at {CHROMIUM}: `make browser` "
                    "installs it (apt-get install chromium)", pytrace=False)
    try:
        sync_api = importlib.import_module("playwright.sync_api")
    except ImportError as error:
        pytest.fail(f"browser tests need the playwright package ({error}): `make venv` "
                    "installs it from requirements-dev.txt", pytrace=False)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()
