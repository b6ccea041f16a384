#!/usr/bin/env bash
# Make sure `chromium` and `chromedriver` are on PATH for the browser tests
# (llm_assets_tests/test_evaluation/test_review_browser.py). Idempotent and quiet:
# does nothing when both are present, otherwise installs the Debian packages
# `chromium` and `chromium-driver` with apt-get (through sudo when not root).
set -euo pipefail

have_both() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

if have_both; then
    exit 0
fi

fail() {
    echo "ensure_chromium.sh: $1" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 \
    || fail "chromium/chromedriver missing and apt-get not found; install Chromium and a matching chromedriver onto PATH by hand"

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    fail "chromium/chromedriver missing and not root without passwordless sudo; run: sudo apt-get install chromium chromium-driver"
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"${as_root[@]}" apt-get update -qq >"$log" 2>&1 \
    || fail "apt-get update failed: $(tail -n 1 "$log")"
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >"$log" 2>&1 \
    || fail "apt-get install chromium chromium-driver failed: $(tail -n 1 "$log")"

have_both || fail "apt-get installed chromium chromium-driver but chromium/chromedriver are still not on PATH"
