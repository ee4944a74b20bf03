#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test of the trend app when it is missing.
# Needs root (CI runs as root); as another user it says what to run and the test skips,
# naming the reason. Idempotent: `make test` calls it every time. Never downloads a browser
# build of its own: the test drives this Chromium with Playwright's executable_path.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "install-browser.sh: chromium is installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-browser.sh: chromium is missing; as root run: apt-get install chromium" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "install-browser.sh: installed chromium"
