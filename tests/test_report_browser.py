"""The HTML report (`mailticket report --html FILE`) opened in a real headless Chromium
(Debian's `chromium` and `chromium-driver`, installed by scripts/test-deps.sh: never
skipped): it loads without errors in the console and its four charts are images that
decoded, with a non-zero natural size."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from test_report import PERIOD, history  # noqa: F401 - the fixture
from test_time import office  # noqa: F401 - the fixture history uses


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver are needed: run scripts/test-deps.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    b = webdriver.Chrome(options=options, service=Service(driver))
    yield b
    b.quit()


def test_html_report_renders_in_chromium_with_its_charts(history, browser, tmp_path):  # noqa: F811
    page = tmp_path / "report.html"
    res = history.hd.cli("report", *PERIOD, "--html", str(page))
    assert res.exit_code == 0, res.output
    assert "<script" not in page.read_text() and "http" not in page.read_text()  # self-contained
    browser.get(page.as_uri())
    assert browser.title == "Support report 2026-03-02 to 2026-03-15 by tier"
    charts = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.chart')).map("
        "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
    )
    assert [c[0] for c in charts] == [
        "Tickets per day",
        "Response and resolution times (median, hours)",
        "SLA compliance (%)",
        "Customer satisfaction per week (share rated good, %)",
    ]
    for alt, complete, width, height in charts:
        assert complete and (width, height) == (750, 300), alt
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert "slow" in browser.find_element("tag name", "body").text  # the low rating's comment
