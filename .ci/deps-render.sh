# Dependencies of the renderer tests (tests/test_render.py, tests/test_browser.py).
# Sourced by .ci/run as root on a fresh Debian 12, after `apt-get update` and
# `pip install pyelftools pytest`.  Node 20 and npm are already present.
#  - chromium: the real browser the SVG flame graph is driven in (headless).
#  - golang-go: `go tool pprof -top` reads our pprof export.
#  - tests/browser: playwright-core (drives chromium over CDP) and speedscope
#    (its file-format schema and viewer), pinned by package-lock.json.
#    Playwright must never download a browser: it uses /usr/bin/chromium.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium golang-go
(
  cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)/tests/browser" &&
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
)
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
