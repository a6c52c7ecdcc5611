#!/usr/bin/env bash
# Set-up for development and CI, in one command: the Python environment (.venv with the package and its
# test extra) and the tools the tests use (Node.js + npm, for the ocpp-rpc charge point of the interop
# tests; redis-server and PostgreSQL 15, which the router's tests start on free ports; Chromium and its
# driver, for the operator page's browser tests). System packages come from apt when they are missing (as
# root, or through sudo).
# README.md shows this command; .ci/run runs exactly it, then the test command.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} with apt-get" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
npm install --silent --no-audit --no-fund --prefix tests/interop
echo "setup: done; run the tests with .venv/bin/python -m pytest" >&2
