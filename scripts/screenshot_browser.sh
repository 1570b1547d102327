#!/usr/bin/env bash
# Screenshot of a feature browser page with headless Chromium (as docs/figures/feature_browser_demo.png
# was made: `make demo`, `build/bin/sae_browser --run runs/demo`, then this with 462 and the figure path).
# Usage: scripts/screenshot_browser.sh PAGE.html FEATURE OUT.png
set -euo pipefail
page="$(realpath "$1")" feature="$2" out="$3"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
timeout 120 chromium --headless --disable-gpu --no-sandbox --hide-scrollbars --user-data-dir="$profile" \
  --window-size=1200,900 --screenshot="$out" "file://$page#f$feature" > /dev/null 2>&1
echo "wrote $out (feature $feature of $page)"
