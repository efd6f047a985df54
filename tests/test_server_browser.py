"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium; no browser download): a batch's progress bar reaches 100%, pause and resume are clicked,
failures and thumbnails show, the page fits a phone, the token is asked once. Screenshots are
saved (to $BATCHCLI_SCREENSHOTS when set, else the test's tmp folder)."""

from __future__ import annotations

import os
import shutil

import pytest
from crashops import make_pngs
from serverkit import jcall, need_serve_extra, start_server, wait_status

need_serve_extra()
pytest.importorskip("selenium", reason="selenium is not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    pytest.skip("chromium and chromium-driver are not installed", allow_module_level=True)

API = "/api/v1"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def shot(driver, tmp_path, name: str) -> str:
    folder = os.environ.get("BATCHCLI_SCREENSHOTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    assert driver.save_screenshot(path)
    assert os.path.getsize(path) > 5000
    return path


def until(driver, cond, timeout: float = 60, what: str = "the page"):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders live: an element found a moment ago may be gone; look again
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)) \
        .until(lambda d: cond(d), message=f"waiting for {what}")


def text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    els = driver.find_elements(By.CSS_SELECTOR, css)
    return els[0].text if els else ""


def test_dashboard_follows_a_batch_to_100_percent_with_pause_and_resume(browser, tmp_path):
    from selenium.webdriver.common.by import By

    root = tmp_path / "root"
    make_pngs(root / "photos", 14, size=96)
    slow = root / "slow"  # items of 0.25 s until the resume is clicked, then full speed
    slow.touch()
    srv = start_server(tmp_path / "home", root)
    try:
        status, made = jcall(srv.url + API + "/batches", "POST", {
            "inputs": ["photos/"], "out": "web/", "name": "holiday", "workers": 1,
            "pipeline": f"crashtest raise match=img003 | crashtest delay=0.25 slow={slow} | resize 64x64 | convert jpg"})
        assert status == 201, made
        bid = made["batch_id"]
        browser.get(f"{srv.url}/#/batch/{bid}")
        until(browser, lambda d: text(d, "#status") == "running", what="running")
        def percent(d) -> float:
            return float(d.find_element(By.CSS_SELECTOR, "#b-bar").get_attribute("data-percent") or 0)

        until(browser, lambda d: percent(d) > 0, what="the bar to move")
        browser.find_element(By.ID, "btn-pause").click()
        until(browser, lambda d: text(d, "#status") == "paused", what="paused")
        paused_at = percent(browser)
        assert 0 < paused_at < 100
        assert jcall(f"{srv.url}{API}/batches/{bid}")[1]["status"] == "paused"  # the click reached the batch
        shot(browser, tmp_path, "dashboard-paused.png")
        browser.find_element(By.ID, "btn-resume").click()
        until(browser, lambda d: text(d, "#status") in ("running", "completed"), what="resumed")
        slow.unlink()
        until(browser, lambda d: percent(d) == 100.0, what="100%")
        until(browser, lambda d: text(d, "#status") == "completed", what="completed")
        assert wait_status(srv, bid)["failed"] == 1
        # failures and thumbnails
        until(browser, lambda d: "injected op failure" in text(d, "#failure-list"), what="the failure reason")
        until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 13, what="13 thumbnails")
        until(browser, lambda d: d.execute_script(
            "return [...document.querySelectorAll('#thumbs img')].every(i => i.complete && i.naturalWidth > 0)"),
            what="thumbnails to load")
        from selenium.webdriver.support.ui import Select

        Select(browser.find_element(By.ID, "item-filter")).select_by_visible_text("failed")
        until(browser, lambda d: [r.get_attribute("data-status") for r in d.find_elements(By.CSS_SELECTOR, "#items tbody tr")]
              == ["failed"], what="the failed filter")
        browser.find_element(By.CSS_SELECTOR, "#thumbs button").click()
        until(browser, lambda d: d.execute_script(
            "const a = document.querySelector('#compare-before'), b = document.querySelector('#compare-after');"
            "return document.querySelector('#compare-dialog').open && a.complete && a.naturalWidth > 0 && b.naturalWidth > 0"),
            what="before and after")
        shot(browser, tmp_path, "dashboard-compare.png")
        browser.find_element(By.CSS_SELECTOR, "#compare-dialog button").click()
        browser.execute_script("window.scrollTo(0, 0)")
        shot(browser, tmp_path, "dashboard-batch.png")
        # the list: the same batch at 100%
        browser.get(f"{srv.url}/#/")
        until(browser, lambda d: "1 failed" in text(d, f"#batch-{bid}"), what="the batch card")
        assert browser.find_element(By.CSS_SELECTOR, f"#batch-{bid} .bar").get_attribute("data-percent") == "100.0"
        card = text(browser, f"#batch-{bid}")
        assert "holiday" in card and "completed" in card
        shot(browser, tmp_path, "dashboard-list.png")
        # a phone's screen: nothing wider than the viewport
        browser.set_window_size(390, 844)
        for page, ready in (("#/new", "#roots"), ("#/", f"#batch-{bid} .b-done"), (f"#/batch/{bid}", "#items tbody tr")):
            browser.get(f"{srv.url}/{page}")
            until(browser, lambda d: text(d, ready), what=page)
            assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), page
            assert not browser.find_elements(By.CSS_SELECTOR, "#view > .msg.error"), page
        until(browser, lambda d: d.execute_script(  # the bar has grown to its full width
            "const b = document.querySelector('#b-bar'); return b.firstElementChild.offsetWidth >= b.offsetWidth - 1"),
            what="the full bar")
        shot(browser, tmp_path, "dashboard-phone.png")
    finally:
        browser.set_window_size(1280, 1000)
        srv.stop()


def test_the_form_starts_a_batch_and_the_token_is_asked_once(browser, tmp_path):
    from selenium.webdriver.common.by import By

    root = tmp_path / "root"
    make_pngs(root / "photos", 3)
    srv = start_server(tmp_path / "home", root, "--token", "browser-token-123")
    try:
        browser.get(srv.url + "/#/new")
        until(browser, lambda d: d.execute_script("return document.querySelector('#token-dialog').open"), what="the token prompt")
        browser.find_element(By.ID, "token-input").send_keys("browser-token-123")
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        until(browser, lambda d: text(d, "#roots") == os.path.realpath(root), what="the allowed root")
        browser.find_element(By.ID, "f-inputs").send_keys("photos/")
        pipeline = browser.find_element(By.ID, "f-pipeline")
        pipeline.clear()
        pipeline.send_keys("resize 32x32")
        browser.find_element(By.ID, "f-name").send_keys("fromform")
        browser.find_element(By.ID, "f-submit").click()
        until(browser, lambda d: "#/batch/" in d.current_url, what="the new batch's page")
        until(browser, lambda d: text(d, "#status") == "completed", what="completed")
        assert text(browser, "#b-title") == "fromform"
        browser.get(srv.url + "/#/")  # the session keeps the token: no second prompt
        until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".card"), what="the list")
        assert not browser.execute_script("return document.querySelector('#token-dialog').open")
        # files chosen on the page are uploaded with the form (the drop zone's path)
        browser.get(srv.url + "/#/new")
        until(browser, lambda d: text(d, "#roots"), what="the form")
        browser.find_element(By.ID, "f-files").send_keys("\n".join(str(root / "photos" / f"img00{k}.png") for k in (0, 1)))
        until(browser, lambda d: text(d, "#drop-count") == "2 file(s)", what="2 files chosen")
        browser.find_element(By.ID, "f-name").send_keys("dropped")
        browser.find_element(By.ID, "f-submit").click()
        until(browser, lambda d: "#/batch/" in d.current_url, what="the uploaded batch's page")
        until(browser, lambda d: text(d, "#status") == "completed", what="completed")
        until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 2, what="2 thumbnails")
        bid = browser.current_url.rsplit("/", 1)[1]
        assert sorted(os.listdir(tmp_path / "home" / "batches" / bid / "uploads")) == ["img000.png", "img001.png"]
    finally:
        srv.stop()


@pytest.mark.parametrize("damage", ["journal deleted", "batch removed"])
def test_a_batch_damaged_or_removed_while_shown_says_why_once_and_stops_following(browser, tmp_path, damage):
    """The page went on opening the batch's WebSocket every 3 s for ever (a refused handshake
    says nothing to a browser), still showing the batch as it was."""
    import time

    from crashops import run

    root, home = tmp_path / "root", tmp_path / "home"
    make_pngs(root / "photos", 2)
    r = run(home, "start", root / "photos", "--out", tmp_path / "out", "--name", "d", "-p", "convert png",
            "--min-free-space", "0")
    assert r.returncode == 0, r.stderr
    bid = os.listdir(home / "batches")[0]
    srv = start_server(home, root)
    counter = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__sockets = 0; const Real = window.WebSocket;"
        "window.WebSocket = function (...a) { window.__sockets++; return new Real(...a); };"
        "window.WebSocket.prototype = Real.prototype;")})
    try:
        browser.get(f"{srv.url}/#/batch/{bid}")
        until(browser, lambda d: text(d, "#status") == "completed" and d.execute_script("return window.__sockets") >= 1,
              what="the batch, followed")
        if damage == "journal deleted":
            os.unlink(home / "batches" / bid / "journal.jsonl")
            until(browser, lambda d: text(d, "#status") == "damaged", timeout=20, what="damaged")
            assert text(browser, "#b-reason") == "missing journal.jsonl"
        else:
            assert run(home, "cleanup", "--older-than", "0s").returncode == 0
            until(browser, lambda d: "no batches in" in text(d, "#action-msg"), timeout=20, what="the batch gone")
        opened = browser.execute_script("return window.__sockets")
        time.sleep(4)  # more than one of the 3 s waits between tries
        assert browser.execute_script("return window.__sockets") == opened
        assert text(browser, "#status") == ("damaged" if damage == "journal deleted" else "completed")
        shot(browser, tmp_path, f"dashboard-{damage.replace(' ', '-')}.png")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": counter["identifier"]})
        srv.stop()
