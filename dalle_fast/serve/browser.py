"""The page of ``python -m dalle_fast.serve`` in a real browser, as a user uses it: Debian's
headless Chromium driven through selenium (:func:`chromium`), a prompt typed and Generate pressed
(:func:`generate_in_page`). For the browser test and the README screenshot
(:mod:`dalle_fast.serve.screenshot`).
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_INSTALL = "apt-get install chromium chromium-driver"
PIP_INSTALL = 'pip install -e ".[serve-test]"'
GALLERY_IMAGES = "#gallery .thumbnail-item img"  # the kept images the gallery shows


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (the system picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class BrowserMissing(RuntimeError):
    """selenium, Chromium or its driver is not installed; the message says how to install it."""


def chromium(width: int = 1280, height: int = 900) -> WebDriver:
    """A headless Chromium window of ``width`` x ``height`` px (``/usr/bin/chromium`` through
    ``/usr/bin/chromedriver``); :class:`BrowserMissing` when selenium or either program is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        raise BrowserMissing(f"{' and '.join(missing)} not found: the browser test needs Debian's Chromium and its "
                             f"driver: {APT_INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserMissing(f"the browser test needs selenium: {PIP_INSTALL}") from None
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def fill(driver: WebDriver, field: str, value: str) -> None:
    """Type ``value`` into the input of the page's field ``field`` (its elem_id) as a user does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{field} input, #{field} textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE, value)


def generate_in_page(driver: WebDriver, url: str, prompt: str, num: int, keep: int, timeout: float = 120) -> int:
    """Open the page at ``url``, type ``prompt``, ``num`` and ``keep``, press Generate and wait (at
    most ``timeout`` seconds each for the page and for the images) until the gallery shows
    images; returns how many it shows. ``TimeoutException`` (of selenium) when they do not come."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    for field, value in (("prompt", prompt), ("num", str(num)), ("keep", str(keep))):
        fill(driver, field, value)
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, GALLERY_IMAGES) and d.find_elements(By.CSS_SELECTOR, "#summary p"))
    return len(driver.find_elements(By.CSS_SELECTOR, GALLERY_IMAGES))
