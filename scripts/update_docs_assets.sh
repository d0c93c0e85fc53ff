#!/usr/bin/env bash
# Refreshes the Swagger UI and ReDoc files that /docs and /redoc serve (service/api/static/).
#
# They come from the npm registry's packages (`npm pack`, no CDN) and are committed, so that the
# service, its wheel and its image serve the docs with no network. Bump a version below, run this
# script from anywhere, check /docs and /redoc (tests/api/test_docs_browser.py) and commit the result.
set -euo pipefail

SWAGGER_UI_VERSION="${SWAGGER_UI_VERSION:-5.35.0}"  # npm: swagger-ui-dist
REDOC_VERSION="${REDOC_VERSION:-2.5.4}"             # npm: redoc (2.x: FastAPI's get_redoc_html)

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATIC="$ROOT/service/api/static"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
npm pack --silent "swagger-ui-dist@$SWAGGER_UI_VERSION" "redoc@$REDOC_VERSION" >/dev/null
mkdir swagger redoc
tar xzf "swagger-ui-dist-$SWAGGER_UI_VERSION.tgz" -C swagger
tar xzf "redoc-$REDOC_VERSION.tgz" -C redoc

rm -rf "$STATIC/swagger-ui" "$STATIC/redoc"
mkdir -p "$STATIC/swagger-ui" "$STATIC/redoc"
for file in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE; do
    cp "swagger/package/$file" "$STATIC/swagger-ui/$file"
done
# Byte for byte as published (no source maps: browsers ask for those only with devtools open).
cp redoc/package/bundles/redoc.standalone.js redoc/package/LICENSE "$STATIC/redoc/"

cat >"$STATIC/VERSIONS" <<VERSIONS
# Written by scripts/update_docs_assets.sh: npm packages whose dist files are copied here.
swagger-ui-dist $SWAGGER_UI_VERSION (Apache-2.0): swagger-ui/
redoc $REDOC_VERSION (MIT): redoc/
VERSIONS
echo "docs assets: swagger-ui-dist $SWAGGER_UI_VERSION, redoc $REDOC_VERSION -> $STATIC"
