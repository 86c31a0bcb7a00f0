#!/usr/bin/env bash
# `make demo`: real rollouts end to end on this machine, on loopback.
#
# Starts nats-server (JetStream), two scheduler replicas, an analyzer, a router agent driving a
# real Envoy over xDS, Prometheus scraping Envoy, a notifier posting to a local receiver, demo
# app v1, v2 and v3 (v3 fails 10 % of requests), steady load through Envoy, and the web
# dashboard (`aviary dashboard`, its URL printed; AVIARY_DEMO_DASHBOARD_PORT picks the port).
# Then:
#   (a) v1 -> v2, healthy: must be promoted;
#   (b) v2 -> v3, 10 % errors: must be rolled back on request-success-rate.
# Prints live progress (`aviary watch`), a summary, stops everything (also on Ctrl-C), and exits 0
# only if both outcomes were right.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/debug"
tools="$root/.tools/bin"
work="$(mktemp -d -t aviary-demo.XXXXXX)"
pids=()

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    echo "demo failed; logs of every component:" >&2
    for log in "$work"/*.log; do echo "--- $log (last lines)" >&2; tail -n 15 "$log" >&2; done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start() { # name, command...
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
wait_http() { # url, what
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then echo "$2 did not become ready ($1)" >&2; return 1; fi
    sleep 0.2
  done
}

for exe in aviary aviary-scheduler aviary-analyzer aviary-router-agent aviary-notifier aviary-demo-app aviary-load; do
  [ -x "$bin/$exe" ] || { echo "missing $bin/$exe: run 'make build' first" >&2; exit 1; }
done

NATS=$(free_port); NATS_MON=$(free_port); XDS=$(free_port); EDGE=$(free_port); ENVOY_ADMIN=$(free_port)
PROM=$(free_port); V1=$(free_port); V2=$(free_port); V3=$(free_port); RECV=$(free_port)
S1=$(free_port); S2=$(free_port)
export AVIARY_NATS_URL="nats://127.0.0.1:$NATS"
export AVIARY_LOG="warn"

say "starting nats-server (JetStream) on :$NATS"
start nats "$tools/nats-server" -js -a 127.0.0.1 -p "$NATS" -m "$NATS_MON" --store_dir "$work/nats"
wait_http "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" nats-server

say "starting demo apps v1 (:$V1), v2 (:$V2), v3 with 10% errors (:$V3)"
start app-v1 "$bin/aviary-demo-app" --listen "127.0.0.1:$V1" --version v1
start app-v2 "$bin/aviary-demo-app" --listen "127.0.0.1:$V2" --version v2
start app-v3 "$bin/aviary-demo-app" --listen "127.0.0.1:$V3" --version v3 --error-rate 0.1
for p in $V1 $V2 $V3; do wait_http "http://127.0.0.1:$p/healthz" "demo app :$p"; done

say "starting the router agent (Envoy xDS on :$XDS) and Envoy (listener :$EDGE)"
cat >"$work/agent.yaml" <<YAML
ingresses:
  - name: edge
    provider: envoy
    xds_addr: 127.0.0.1:$XDS
YAML
start router-agent "$bin/aviary-router-agent" --config-file "$work/agent.yaml" --admin-addr "127.0.0.1:$(free_port)" \
  --reconcile-interval 2s
sed -e "s/{{ADMIN_PORT}}/$ENVOY_ADMIN/; s/{{LISTENER_PORT}}/$EDGE/; s/{{XDS_PORT}}/$XDS/" \
  "$root/deploy/local/envoy-bootstrap.yaml" >"$work/envoy.yaml"
start envoy "$tools/envoy" -c "$work/envoy.yaml" --base-id "$((RANDOM % 60000))" --log-level warn
wait_http "http://127.0.0.1:$ENVOY_ADMIN/ready" envoy

say "starting Prometheus (:$PROM) scraping Envoy every second"
sed -e "s/{{ENVOY_ADMIN}}/$ENVOY_ADMIN/" "$root/deploy/local/prometheus.yaml" >"$work/prometheus.yaml"
start prometheus /usr/bin/prometheus --config.file "$work/prometheus.yaml" --storage.tsdb.path "$work/prom" \
  --web.listen-address "127.0.0.1:$PROM"
wait_http "http://127.0.0.1:$PROM/-/ready" prometheus

say "starting the analyzer, the notifier (posting to :$RECV) and two scheduler replicas"
start receiver python3 "$root/scripts/receiver.py" "$RECV" "$work/notifications.jsonl"
cat >"$work/notifier.yaml" <<YAML
defaultProvider: demo
defaultSeverity: info
providers:
  - name: demo
    type: webhook
    url: http://127.0.0.1:$RECV/hook
YAML
start analyzer "$bin/aviary-analyzer" --prometheus-url "http://127.0.0.1:$PROM" --scrape-interval 1s --admin-addr "127.0.0.1:$(free_port)"
start notifier "$bin/aviary-notifier" --config "$work/notifier.yaml" --cluster-name demo --admin-addr "127.0.0.1:$(free_port)"
for i in 1 2; do
  port_var="S$i"; admin=$(free_port)
  start "scheduler-$i" "$bin/aviary-scheduler" --grpc-addr "127.0.0.1:${!port_var}" --admin-addr "127.0.0.1:$admin" \
    --replica-id "scheduler-$i" --lease-ttl 3s
  wait_http "http://127.0.0.1:$admin/readyz" "scheduler-$i"
done
export AVIARY_SERVER="http://127.0.0.1:$S1"

DASH=${AVIARY_DEMO_DASHBOARD_PORT:-$(free_port)}
start dashboard "$bin/aviary" dashboard --listen "127.0.0.1:$DASH"
wait_http "http://127.0.0.1:$DASH/healthz" dashboard
say "dashboard: http://127.0.0.1:$DASH/ (open it to watch the rollouts)"

rollout() { # primary-version primary-port canary-version canary-port
  cat <<YAML
apiVersion: aviary.dev/v1alpha1
kind: Rollout
metadata: { name: podinfo, namespace: demo }
spec:
  ingresses: [{ name: edge }]
  primary: { name: podinfo-$1, endpoints: ["127.0.0.1:$2"] }
  canary: { name: podinfo-$3, endpoints: ["127.0.0.1:$4"] }
  progressDeadlineSeconds: 60
  analysis:
    interval: 4s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
    metrics:
      - name: request-success-rate
        thresholdRange: { min: 99 }
        minRequests: 20
      - name: request-duration
        thresholdRange: { max: 500 }
YAML
}

run_rollout() { # label, expected outcome (0 promoted / 1 rolled back), rollout args...
  local label=$1 expect=$2; shift 2
  rollout "$@" >"$work/$label.yaml"
  say "rollout $label: podinfo-$1 -> podinfo-$3"
  local started=$SECONDS
  "$bin/aviary" apply -f "$work/$label.yaml"
  local outcome=0
  "$bin/aviary" watch demo/podinfo || outcome=$?
  durations+=("$label $((SECONDS - started))s")
  if [ "$outcome" -ne "$expect" ]; then
    echo "rollout $label ended with $outcome, expected $expect" >&2
    return 1
  fi
}

say "sending 40 requests/s through Envoy"
start load "$bin/aviary-load" --url "http://127.0.0.1:$EDGE/" --rps 40
durations=()
run_rollout a-healthy 0 v1 "$V1" v2 "$V2"
run_rollout b-failing 1 v2 "$V2" v3 "$V3"

# Stop the load (it prints what the traffic saw) and let the notifier catch up.
load_pid=${pids[-1]}
kill -INT "$load_pid"; wait "$load_pid" 2>/dev/null || true
for _ in $(seq 1 50); do grep -q 'rolled-back' "$work/notifications.jsonl" 2>/dev/null && break; sleep 0.2; done

say "summary"
for d in "${durations[@]}"; do echo "  rollout ${d%% *}: took ${d##* }"; done
echo "  a-healthy: podinfo-v2 promoted (expected)"
echo "  b-failing: podinfo-v3 rolled back to podinfo-v2 (expected)"
echo "  traffic seen by clients: $(tail -n 1 "$work/load.log")"
echo "  notifications posted: $(wc -l <"$work/notifications.jsonl" 2>/dev/null || echo 0)"
"$bin/aviary" events demo/podinfo | tail -n 6 || true
curl -fsS -o /dev/null "http://127.0.0.1:$DASH/api/rollouts/demo/podinfo" \
  || { echo "the dashboard stopped answering" >&2; exit 1; }
echo "  dashboard: http://127.0.0.1:$DASH/rollouts/demo/podinfo (up until the demo exits)"
say "demo passed"
