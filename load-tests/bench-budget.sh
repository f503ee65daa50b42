#!/usr/bin/env bash
# Judges one figure of the criterion smoke run against a generous budget: the `route` decision
# at 100,000 (tenant, service) pairs (`route/100k_pairs` of crates/routing-core/benches/route.rs).
# The budget is about ten times the figure measured on the machines of docs/BENCHMARKS.md
# (150-350 ns), so that only a real regression (an index lost, a copy per decision) breaks it,
# never the noise of a shared machine. Run after `cargo bench -p routing-core`; prints the
# figure and the budget, exits 1 above it (or when the figure is missing).
#
# Usage: load-tests/bench-budget.sh    Settings: ROUTE_BUDGET_NS (3500)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/greyrouter/target}"
budget="${ROUTE_BUDGET_NS:-3500}"
estimates="$CARGO_TARGET_DIR/criterion/route/100k_pairs/new/estimates.json"
if [ ! -f "$estimates" ]; then
  echo "bench-budget.sh: no criterion figure at $estimates (run cargo bench -p routing-core first)" >&2
  exit 1
fi
python3 - "$estimates" "$budget" <<'PY'
import json, sys
path, budget = sys.argv[1], float(sys.argv[2])
mean = json.load(open(path))["mean"]["point_estimate"]
verdict = "within" if mean <= budget else "OVER"
print(f"route/100k_pairs: {mean:.1f} ns per decision, budget {budget:.0f} ns: {verdict}")
sys.exit(0 if mean <= budget else 1)
PY
