#!/usr/bin/env bash
# `make bench`: runs every benchmark, collects the JSON lines they print
# ({"name": ..., "value": ..., "unit": ...}) into bench/results.json, and prints a table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mkdir -p bench
raw="$(mktemp)"
trap 'rm -f "$raw"' EXIT

benches=(
  "aviary-router-agent multicluster"
  "aviary-router-agent apply"
  "aviary-analyzer verdicts"
  "aviary-analyzer judge"
  "aviary-scheduler scale"
  "aviary-scheduler scale_out"
  "aviary-scheduler e2e"
  "aviary-controller reconcile"
)
# The end-to-end bench starts every service binary; build them with the bench (release) profile.
echo "bench: building the service binaries" >&2
cargo build -q --release -p aviary-scheduler -p aviary-analyzer -p aviary-router-agent -p aviary-notifier --bins >&2
for entry in "${benches[@]}"; do
  set -- $entry
  echo "bench: $1 $2" >&2
  cargo bench -q -p "$1" --bench "$2" 2>/dev/null | grep '^{' >>"$raw" || echo "bench $1/$2 failed" >&2
done

python3 - "$raw" bench/results.json <<'PY'
import json, sys
rows = []
# A name printed by several benches (nats_rtt_p50_ms: each measures the baseline in its own
# run) keeps the last value printed, so the file has one row per name.
for line in open(sys.argv[1]):
    try:
        row = json.loads(line)
    except ValueError:
        continue
    if {"name", "value", "unit"} <= row.keys():
        rows = [r for r in rows if r["name"] != row["name"]]
        rows.append({"name": row["name"], "value": row["value"], "unit": row["unit"]})
json.dump(rows, open(sys.argv[2], "w"), indent=2)
print("| name | value | unit |\n|---|---:|---|")
for r in rows:
    v = r["value"]
    print(f"| {r['name']} | {v:.3f} | {r['unit']} |" if isinstance(v, float) else f"| {r['name']} | {v} | {r['unit']} |")
PY
