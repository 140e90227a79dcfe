#!/usr/bin/env bash
# Runs a command with Node.js 24 first on PATH: `bash scripts/node24.sh npm test`.
# Node.js 20 is past end of life, so CI runs the suite on both. The Node.js 24 binary comes from the npm
# registry's `node` package (it ships the binary for this platform), kept in MESHCA_NODE24_DIR
# (default ~/.cache/meshca-node24), so nothing outside the npm registry is needed.
set -euo pipefail
dir="${MESHCA_NODE24_DIR:-$HOME/.cache/meshca-node24}"
if [ ! -x "$dir/node_modules/.bin/node" ]; then
  mkdir -p "$dir"
  (cd "$dir" && npm install --no-save --no-audit --no-fund --loglevel=error node@24 >/dev/null)
fi
export PATH="$dir/node_modules/.bin:$PATH"
echo "node24.sh: $(command -v node) $(node --version)" >&2
case "$(node --version)" in
  v24.*) ;;
  *) echo "node24.sh: expected Node.js 24 from $dir, found $(node --version); remove $dir and run again" >&2; exit 1 ;;
esac
exec "$@"
