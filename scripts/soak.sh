#!/usr/bin/env bash
# `make soak`: the chaos soak (tests/tests/soak.rs) with its long settings — 50 concurrent
# rollouts while processes are SIGKILLed for AVIARY_SOAK_SECONDS (default 600) — then its
# figures (soak_rollouts_correct, soak_kills, soak_duplicate_steps, soak_lost_steps) into
# bench/soak.json, merged into bench/results.json when that exists, and printed as a table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mkdir -p bench
raw="$(mktemp)"
trap 'rm -f "$raw"' EXIT

export AVIARY_SOAK_SECONDS="${AVIARY_SOAK_SECONDS:-600}"
export AVIARY_SOAK_ROLLOUTS="${AVIARY_SOAK_ROLLOUTS:-50}"
echo "soak: building the service binaries" >&2
cargo build -q -p aviary-scheduler -p aviary-analyzer -p aviary-router-agent -p aviary-notifier --bins >&2
status=0
cargo nextest run -p aviary-e2e --test soak --profile soak --no-capture | tee "$raw" || status=$?

python3 - "$raw" bench/soak.json bench/results.json <<'PY'
import json, os, sys
rows = []
for line in open(sys.argv[1]):
    try:
        row = json.loads(line)
    except ValueError:
        continue
    if isinstance(row, dict) and {"name", "value", "unit"} <= row.keys():
        rows = [r for r in rows if r["name"] != row["name"]]
        rows.append({"name": row["name"], "value": row["value"], "unit": row["unit"]})
if not rows:
    sys.exit("soak: the test printed no figures")
json.dump(rows, open(sys.argv[2], "w"), indent=2)
if os.path.exists(sys.argv[3]):
    merged = json.load(open(sys.argv[3]))
    names = {r["name"] for r in rows}
    merged = [r for r in merged if r.get("name") not in names] + rows
    json.dump(merged, open(sys.argv[3], "w"), indent=2)
print("| name | value | unit |\n|---|---:|---|")
for r in rows:
    print(f"| {r['name']} | {r['value']} | {r['unit']} |")
PY
exit "$status"
