#!/bin/sh
# Installs what the browser test (tests/test_serve_browser.py) drives: Debian's headless Chromium and its
# WebDriver. Idempotent: does nothing when both are already there. Needs root (apt-get) otherwise.
# Nothing is downloaded at test time; selenium comes from the dev extra (pip install -e '.[dev]').
set -eu
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium chromium-driver
