"""The web page driven as a person would, in Debian's chromium through its chromedriver (Selenium
downloads nothing), with the network cut off; and the ``advquery ui`` server it talks to, started as
a subprocess that records every connection it opens. Used by tests/test_ui.py and bench/ui_screenshot.py."""
from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage",
                  # no network beyond this computer: names do not resolve, and any address goes to a closed port
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
NETWORK_SCHEMES = ("http", "https", "ws", "wss", "ftp")
# The server runs `advquery ui` with an audit hook that logs every outgoing connection and name lookup.
SERVER_SCRIPT = """
import sys
log = open(sys.argv[1], "a", buffering=1)
def audit(event, args):
    if event == "socket.connect":
        log.write(repr(args[1]) + "\\n")
    elif event == "socket.getaddrinfo":
        log.write(repr(args[0]) + "\\n")
sys.addaudithook(audit)
from advquery.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (CHROMIUM and CHROMEDRIVER):
        return "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    folder: Path  # the server's private folder
    connections: Path  # one line per connection or name lookup the server made
    log: Path

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def outside_contacts(self) -> list[str]:
        """The connections and name lookups of the server that went beyond this computer."""
        lines = self.connections.read_text().splitlines() if self.connections.exists() else []
        return [line for line in lines if not any(host in line for host in LOOPBACK)]


@contextmanager
def ui_server(workdir: Path, *options: str) -> Iterator[Server]:
    """``advquery ui --port 0 OPTIONS`` running until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    log, connections = workdir / "server.log", workdir / "connections.txt"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(connections), "ui", "--port", "0",
                                    *options], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "the page is at " not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"advquery ui did not start:\n{log.read_text()}")
            time.sleep(0.2)
        line = next(l for l in log.read_text().splitlines() if "the page is at " in l)
        url = line.split("the page is at ")[1].split()[0]
        folder = Path(line.split("uploads are kept in ")[1].split()[0])
        yield Server(process, url, folder, connections, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


@contextmanager
def chromium(workdir: Path) -> Iterator:
    """A headless chromium with a fresh profile that downloads into ``workdir / 'downloads'``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={workdir / 'profile'}")
    options.add_argument("--window-size=1280,1600")
    downloads = workdir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def foreign_urls(urls: list[str], page_url: str) -> list[str]:
    """Those of ``urls`` that go over the network to another server than the page's (chrome:// pages are
    the browser's own, data: and blob: URLs the page's)."""
    origin = urlsplit(page_url).netloc
    return [u for u in urls if urlsplit(u).scheme in NETWORK_SCHEMES and urlsplit(u).netloc != origin]


def wait_for(condition, timeout: float, what: str):
    """Poll ``condition()`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def protect_in_page(driver, url: str, photos: list[Path], strength: str, timeout: float = 240) -> None:
    """Open the page, drop ``photos``, choose ``strength``, start, and wait until every photo is done or failed."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    upload = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#photos input[type=file]"), 60, "the page")
    upload[0].send_keys("\n".join(str(p) for p in photos))
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#photos tr.file")) == len(photos)
             and "%" not in driver.find_element(By.ID, "photos").text, 60, "the uploads")  # no upload still in progress
    driver.find_element(By.XPATH, f"//*[@id='strength']//label[normalize-space()='{strength}']").click()
    driver.find_element(By.ID, "start").click()
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#job-status tr.photo.done, "
                                              "#job-status tr.photo.failed")) == len(photos)
             and driver.find_elements(By.ID, "download-all")
             and "all photos" in driver.find_element(By.ID, "download-all").text, timeout, "every photo")


def shown_image(driver, selector: str, previous: str | None = None) -> dict:
    """The image at ``selector`` once loaded (and, with ``previous``, once its source changed): src and natural size."""
    script = ("const i = document.querySelector(arguments[0]);"
              "return i && i.complete && i.naturalWidth ? [i.src, i.naturalWidth, i.naturalHeight] : null;")

    def loaded():
        found = driver.execute_script(script, selector)
        return found if found and found[0] != previous else None
    src, width, height = wait_for(loaded, 60, f"the image {selector}")
    return {"src": src, "width": width, "height": height}


def slider_images(driver, previous: str | None = None) -> list[dict]:
    """The before and after images of the slider, once loaded (and, with ``previous``, once the first changed)."""
    script = ("return [...document.querySelectorAll('#slider img[data-testid=imageslider-image]')]"
              ".map(i => i.complete && i.naturalWidth ? [i.src, i.naturalWidth, i.naturalHeight] : null);")

    def loaded():
        found = driver.execute_script(script)
        return found if len(found) == 2 and all(found) and found[0][0] != previous else None
    return [{"src": src, "width": w, "height": h} for src, w, h in wait_for(loaded, 60, "both slider images")]


def full_page_screenshot(driver, target: Path) -> Path:
    """A PNG of the whole page, not only the window (Chrome's capture beyond the viewport)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(base64.b64decode(shot["data"]))
    return target
