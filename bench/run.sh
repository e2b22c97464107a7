#!/usr/bin/env bash
# One command: build the bridge (release) and the harness, run the workloads of
# ../shared/BENCH.md, print the table, write bench/results/<timestamp>.json.
#
#   bench/run.sh                      # all workloads, 3 rounds, 10 s loads
#   bench/run.sh --only W1,W2 --rounds 1 --duration 5
#   BENCH_NO_BUILD=1 bench/run.sh     # use the existing target/release/agent-bridge
#   bench/run.sh summarize bench/results/*.json   # medians across earlier runs
#
# Every other argument goes to `bench run` (see bench/README.md).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

echo "== building the harness (bench/target)" >&2
(cd "$here" && CARGO_TARGET_DIR="$here/target" cargo build --release --quiet)
bench="$here/target/release/bench"

if [[ "${1:-}" == "summarize" ]]; then
  shift
  exec "$bench" summarize "$@"
fi

if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
  echo "== building the bridge (cargo build --release)" >&2
  cargo build --release --quiet
fi
src="$root/target/release/agent-bridge"
[[ -x "$src" ]] || { echo "no $src; build it or unset BENCH_NO_BUILD" >&2; exit 1; }
# Run from a copy, so a concurrent rebuild cannot swap the binary mid-run.
snap="$here/target/agent-bridge.snapshot"
cp -f "$src" "$snap"

rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git -C "$root" status --porcelain -- src Cargo.toml Cargo.lock migrations 2>/dev/null | wc -l | tr -d ' ')"
export BENCH_GIT="git $rev, $dirty changed file(s) under src/ Cargo.* migrations/, binary built $(date -u -r "$src" +%FT%TZ)"

echo "== nproc $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "$bench" run --bridge "$snap" --out "$here/results" "$@"
