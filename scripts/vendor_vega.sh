#!/usr/bin/env bash
# Rebuilds .dvc/plots/page.html: DVC's plots page with the Vega renderer inline, so `dvc plots show` and
# `dvc plots diff` draw with no network (DVC's own page loads vega, vega-lite and vega-embed from a CDN).
# Needs npm (registry access) only when the pinned versions below change; the result is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
VEGA=5.33.1 VEGA_LITE=5.23.0 VEGA_EMBED=6.29.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED" >/dev/null)
for package in "vega-$VEGA" "vega-lite-$VEGA_LITE" "vega-embed-$VEGA_EMBED"; do
  mkdir "$work/$package" && tar -xzf "$work/$package.tgz" -C "$work/$package"
done
license=$(cat "$work/vega-lite-$VEGA_LITE/package/LICENSE")
page=.dvc/plots/page.html
{
  cat <<HTML
<!DOCTYPE html>
<!-- DVC plots page (dvc plots show/diff, config plots.html_template) with its renderer inline: vega $VEGA,
     vega-lite $VEGA_LITE, vega-embed $VEGA_EMBED from the npm registry (BSD-3-Clause). Rebuild: scripts/vendor_vega.sh.
     It leaves out DVC's scripts placeholder on purpose: DVC fills that with script tags that load from a CDN.
$license
-->
<html>
<head><meta charset="utf-8">{refresh_tag}<title>imgclf: DVC plots</title>
<style>body { font-family: sans-serif; margin: 16px; } body > div { display: inline-block; vertical-align: top; margin: 0 24px 24px 0; }</style>
HTML
  for file in "vega-$VEGA/package/build/vega.min.js" "vega-lite-$VEGA_LITE/package/build/vega-lite.min.js" \
              "vega-embed-$VEGA_EMBED/package/build/vega-embed.min.js"; do
    if grep -q -e '</script' -e '{plot_divs}' -e '{refresh_tag}' -e '{scripts}' "$work/$file"; then
      echo "error: $file contains text that would break the inline page; vendor another version" >&2
      exit 1
    fi
    printf '<script>\n'
    cat "$work/$file"
    printf '\n</script>\n'
  done
  # SVG instead of vega-embed's default canvas: sharp at any zoom, and the drawn marks are in the page's DOM.
  printf '<script>\nconst embedOnCanvas = vegaEmbed;\n'
  printf 'vegaEmbed = (element, spec, options) => embedOnCanvas(element, spec, {renderer: "svg", ...options});\n'
  printf '</script>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
} > "$page.tmp"
mv "$page.tmp" "$page"
echo "wrote $page ($(wc -c < "$page") bytes)"
