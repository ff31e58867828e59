#!/usr/bin/env bash
# Real-model end-to-end test: starts SmolLM2-135M on llama.cpp's llama-server (built once and
# cached in ~/.cache/llm-upstream by ../shared/tools/llm-upstream/start-smollm2.sh) with one
# decoding slot and metrics, runs scripts/e2e-llm.py through `sluice serve --upstream`, stops it.
# Environment: SHARED_DIR (default ../shared), E2E_PORT (default 8089).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_DIR:-$root/../shared}
port=${E2E_PORT:-8089}
(cd "$root" && swift build -c release --product sluice >&2)
venv=${XDG_CACHE_HOME:-$HOME/.cache}/sluice-e2e-venv
if ! "$venv/bin/python" -c 'import websockets' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q websockets
fi
# A portable llama-server first: the shared script's native build crashes here (see that script).
bash "$root/scripts/build-llama-server.sh"
start=$SECONDS
LLM_UPSTREAM_PARALLEL=1 LLAMA_SERVER_ARGS="--metrics" bash "$shared/tools/llm-upstream/start-smollm2.sh" start "$port" >&2
trap 'bash "$shared/tools/llm-upstream/start-smollm2.sh" stop "$port" >&2 || true' EXIT
echo "e2e-llm.sh: llama-server ready after $((SECONDS - start))s" >&2
"$venv/bin/python" "$root/scripts/e2e-llm.py" "$root/.build/release/sluice" "http://127.0.0.1:$port"
