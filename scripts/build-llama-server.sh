#!/usr/bin/env bash
# Builds llama.cpp's llama-server for ../shared/tools/llm-upstream/start-smollm2.sh into its cache
# ($LLM_UPSTREAM_CACHE/bin/llama-server), WITHOUT -march=native, unless a working binary is there.
#
# Why: the shared script builds with GGML_NATIVE=ON. On this kind of machine the CPU advertises
# AMX (amx_tile), so ggml compiles AMX kernels, but the kernel does not grant AMX to processes:
# the server dies with "Illegal instruction" (tilezero) while loading the model. An AVX2 build
# runs everywhere this project runs and is plenty for SmolLM2-135M. The shared script reuses
# any binary it finds in its cache, so running this first is enough.
set -euo pipefail
CACHE=${LLM_UPSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-upstream}
BIN=$CACHE/bin/llama-server
VERSION=0.3.36
SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  # as pinned by start-smollm2.sh
say() { echo "build-llama-server: $*" >&2; }

# .portable marks a binary this script built; the shared script's native build lacks it.
if [ -x "$BIN" ] && [ -f "$CACHE/.portable" ] && "$BIN" --version >/dev/null 2>&1; then
  say "cached $BIN is a portable build"
  exit 0
fi
[ -x "$BIN" ] && say "cached $BIN is not a portable build: rebuilding"
mkdir -p "$CACHE/dl" "$CACHE/bin" "$CACHE/run"
sdist=$CACHE/dl/llama_cpp_python-$VERSION.tar.gz
if [ ! -f "$sdist" ]; then
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d "$CACHE/dl" "llama-cpp-python==$VERSION" >&2
fi
echo "$SHA  $sdist" | sha256sum -c --quiet - >&2 || { say "sha256 mismatch: $sdist"; exit 1; }
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  apt-get install -y -q cmake g++ make >&2 || { apt-get update -q >&2 && apt-get install -y -q cmake g++ make >&2; }
fi
work=$(mktemp -d "$CACHE/build.XXXXXX"); trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
src=$work/llama_cpp_python-$VERSION/vendor/llama.cpp
start=$SECONDS
say "building llama-server with AVX2, no AMX (log: $CACHE/run/build-portable.log)"
{ cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON &&
  cmake --build "$work/build" --target llama-server -j "$(nproc)"; } > "$CACHE/run/build-portable.log" 2>&1 ||
  { tail -n 30 "$CACHE/run/build-portable.log" >&2; say "build failed"; exit 1; }
install -m 755 "$work/build/bin/llama-server" "$BIN"
touch "$CACHE/.portable"
say "built in $((SECONDS - start)) s"
