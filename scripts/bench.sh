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
  "aviary-router-agent apply"
  "aviary-analyzer verdicts"
)
for entry in "${benches[@]}"; do
  set -- $entry
  echo "bench: $1 $2" >&2
  cargo bench -q -p "$1" --bench "$2" 2>/dev/null | grep '^{' >>"$raw" || echo "bench $1/$2 failed" >&2
done

python3 - "$raw" bench/results.json <<'PY'
import json, sys
rows = []
for line in open(sys.argv[1]):
    try:
        row = json.loads(line)
    except ValueError:
        continue
    if {"name", "value", "unit"} <= row.keys():
        rows.append({"name": row["name"], "value": row["value"], "unit": row["unit"]})
json.dump(rows, open(sys.argv[2], "w"), indent=2)
print("| name | value | unit |\n|---|---:|---|")
for r in rows:
    v = r["value"]
    print(f"| {r['name']} | {v:.3f} | {r['unit']} |" if isinstance(v, float) else f"| {r['name']} | {v} | {r['unit']} |")
PY
