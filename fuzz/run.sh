#!/usr/bin/env bash
# Runs each fuzz target for a bounded time and prints the executions of each (`make fuzz`).
#
#   FUZZ_SECONDS=60          seconds per target
#   FUZZ_TARGETS="a b"       which targets (default: all of fuzz/fuzz_targets)
#   FUZZ_TARGET_DIR=dir      where the instrumented build goes (default: $CARGO_TARGET_DIR/fuzz,
#                            else fuzz/target)
#
# New inputs libFuzzer finds go to fuzz/work/<target> (git-ignored); the committed seeds in
# fuzz/corpus/<target> are read only. A crash leaves its input in fuzz/artifacts/<target>/ and
# makes the run fail after the other targets ran. No sanitizer: the crates forbid unsafe code,
# so what is looked for is a panic, with debug assertions (overflow checks) on.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-60}"
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  target_dir="${FUZZ_TARGET_DIR:-$CARGO_TARGET_DIR/fuzz}"
else
  target_dir="${FUZZ_TARGET_DIR:-$root/fuzz/target}"
fi
flags=(--fuzz-dir fuzz --sanitizer none --debug-assertions --target-dir "$target_dir")

cargo +nightly fuzz build "${flags[@]}"

summary=()
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t"
  log="fuzz/work/$t.log"
  printf 'fuzz: %s for %ss\n' "$t" "$seconds" >&2
  # -timeout: an input that takes 10 s is a hang, reported as a crash.
  if cargo +nightly fuzz run "${flags[@]}" "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed+=("$t")
    grep -E 'panicked at|Test unit written to' "$log" >&2 || tail -20 "$log" >&2
  fi
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')"
  summary+=("$(printf '%-14s %-6s %12s execs  cov %s' "$t" "$status" "$execs" "$cov")")
done

printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'fuzz: crashes in %s (inputs in fuzz/artifacts/)\n' "${failed[*]}" >&2
  exit 1
fi
