#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests when it is missing and we may (root + apt-get).
# Without it the browser tests skip with a reason; nothing else needs it.
set -u
for b in chromium chromium-browser; do command -v "$b" >/dev/null 2>&1 && exit 0; done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq chromium >/dev/null 2>&1 || echo "could not install chromium: browser tests will skip"
else
  echo "chromium not found and cannot be installed here: browser tests will skip"
fi
exit 0
