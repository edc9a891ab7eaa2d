"""report.html in a real browser: headless Chromium loads the file, a click filters, we read the page.

CI installs Chromium (Debian packages chromium and chromium-driver, see .ci/run); where they are
absent this module is skipped with the reason shown by `pytest -ra`.
"""

from __future__ import annotations

import shutil

import pytest

from tests.reports_helpers import make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed (apt-get install -y chromium chromium-driver); CI installs it",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium (no network, fresh profile) and the base run's report.html."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
    from selenium.webdriver.chrome.service import Service

    from harness.reports.html import write_run_html

    tmp = tmp_path_factory.mktemp("html")
    html = write_run_html(make_run(tmp, "base"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver, html.as_uri()
    finally:
        driver.quit()


@pytest.fixture
def page(browser):
    """The page freshly loaded, so no test sees another test's clicks."""
    driver, uri = browser
    driver.get(uri)
    return driver


def _by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def test_page_opens_from_the_file_system_listing_every_episode(page):
    assert [li.get_attribute("data-id") for li in _by_css(page, "#episode-list li")] == [
        "p1",
        "p2",
        "p3",
        "p4",
        "p5",
        "p6",
    ]
    assert _by_css(page, "#match-count")[0].text == "6 of 6 episodes"
    # The base plan has 1 wrong→right episode (p2); the button counts it.
    assert _by_css(page, '#transition-filter button[data-transition="i2c"]')[0].text == "wrong→right · Δi→c (1)"
    assert len(_by_css(page, ".plots img")) == 2


def test_clicking_wrong_to_right_shows_only_that_episode_with_its_changes(page):
    _by_css(page, "#math-toggle")[0].click()  # the raw text, as the model wrote it
    _by_css(page, '#transition-filter button[data-transition="i2c"]')[0].click()

    assert [li.get_attribute("data-id") for li in _by_css(page, "#episode-list li")] == ["p2"]
    assert _by_css(page, "#match-count")[0].text == "1 of 6 episodes"
    assert _by_css(page, '#transition-filter button[data-transition="i2c"]')[0].get_attribute("aria-pressed") == "true"
    assert _by_css(page, "#episode-detail h3")[0].text.startswith("p2")
    left, right = _by_css(page, '#episode-detail .pair[data-pair="1-2"] .attempt pre')
    # p2 answers 5 then 7 (gold 7): the words that changed are "1:"->"2:", "5."->"7." and "$5$."->"$7$.".
    assert (
        left.text
        == "Attempt 1: adding up the parts gives 5.\nFinal Answer: The final answer is $5$. I hope it is correct."
    )
    assert "".join(d.text for d in left.find_elements("css selector", "del")) == "1:5.$5$"
    assert "".join(i.text for i in right.find_elements("css selector", "ins")) == "2:7.$7$"
    # The extracted answers are marked wrong (turn 1) and right (turn 2), each with its formula's dollars.
    assert [m.text for m in left.find_elements("css selector", "mark.answer.wrong")] == ["$5$"]
    assert [m.text for m in right.find_elements("css selector", "mark.answer.right")] == ["$7$"]


def test_filters_combine_and_search_narrows_further(page):
    from selenium.webdriver.support.ui import Select

    _by_css(page, '#transition-filter button[data-transition="c2i"]')[0].click()
    assert [li.get_attribute("data-id") for li in _by_css(page, "#episode-list li")] == ["p3", "p5"]
    Select(_by_css(page, "#subject-filter")[0]).select_by_value("Geometry")
    assert [li.get_attribute("data-id") for li in _by_css(page, "#episode-list li")] == ["p3"]
    Select(_by_css(page, "#subject-filter")[0]).select_by_value("")
    search = _by_css(page, "#search")[0]
    search.send_keys("problem p5")
    assert [li.get_attribute("data-id") for li in _by_css(page, "#episode-list li")] == ["p5"]
    assert _by_css(page, "#match-count")[0].text == "1 of 6 episodes"


def test_math_is_rendered_by_the_bundled_katex_and_the_toggle_shows_the_raw_text(page):
    _by_css(page, '#transition-filter button[data-transition="i2c"]')[0].click()
    left, right = _by_css(page, '#episode-detail .pair[data-pair="1-2"] .attempt pre')
    # $5$ in turn 1 is rendered by KaTeX inside the answer mark; no dollar sign is left in the text.
    assert left.find_elements("css selector", "mark.answer.wrong .katex")
    assert right.find_elements("css selector", "ins .katex")
    assert "$" not in left.text
    assert _by_css(page, "#episode-detail .gold .katex")  # the gold answer, 7

    toggle = _by_css(page, "#math-toggle")[0]
    assert (toggle.text, toggle.get_attribute("aria-pressed")) == ("show raw text", "false")
    toggle.click()
    left, _ = _by_css(page, '#episode-detail .pair[data-pair="1-2"] .attempt pre')
    assert not _by_css(page, "#episode-detail .katex")
    assert left.text.endswith("The final answer is $5$. I hope it is correct.")
    assert (toggle.text, toggle.get_attribute("aria-pressed")) == ("render math", "true")
    toggle.click()
    assert _by_css(page, "#episode-detail .attempt pre .katex")
