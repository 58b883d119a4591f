"""A headless Chromium driven by selenium, for the demo page's browser test and its screenshot script.

Debian's `chromium` and `chromium-driver` (scripts/install_test_browser.sh installs them); nothing is
downloaded at run time (selenium's own driver manager is bypassed by naming the driver), and the browser
gets a fresh profile and no network besides the page's server.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
)


def missing_browser() -> str | None:
    """Why the browser cannot start here (None: it can)."""
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if absent:
        return f"{', '.join(absent)} missing: run scripts/install_test_browser.sh"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: pip install -e '.[dev]'"
    return None


def headless_chromium(profile: Path, downloads: Path):
    """A selenium WebDriver for a new headless Chromium with its profile in `profile`, saving downloads
    into `downloads` without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    # Headless Chromium saves downloads only when told where (the preference alone is not always enough).
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver
