#!/usr/bin/env bash
# Installs what building Sluice (--build) or also testing it (--test, the default) needs, when it
# is missing: Debian packages through apt-get (as root, or through sudo), and for the tests two
# PyPI packages. Does nothing when everything is there. Used by scripts/serve.sh,
# scripts/test.sh and .ci/run, so the README's two commands work on a fresh machine.
#
#   build: zlib1g-dev (permessage-deflate), libhiredis-dev (RESP parsing), libssl-dev, libpq-dev
#          and pkg-config (the system libraries the design names)
#   test:  those, and redis-server, postgresql, nginx-light, prometheus (the tests start their own
#          on loopback, never as services), openssl (throwaway certificates), curl, tmux (the
#          terminal client test); from PyPI opentelemetry-proto (the tracing test's collector)
#          and openai (the front-door test drives the gateway with it)
set -euo pipefail
mode=${1:---test}
build=(zlib1g-dev libssl-dev libhiredis-dev libpq-dev pkg-config)
test=(redis-server openssl curl tmux postgresql nginx-light prometheus)
case "$mode" in
  --build) need=("${build[@]}") ;;
  --test) need=("${build[@]}" "${test[@]}") ;;
  *) echo "usage: $0 [--build|--test]" >&2; exit 2 ;;
esac
missing=()
for package in "${need[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "$mode" = --test ]; then
  python3 -c "import opentelemetry.proto" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check opentelemetry-proto
  python3 -c "import openai" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check openai
fi
