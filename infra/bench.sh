#!/usr/bin/env bash
# The benchmarks, each printing ratios against a baseline measured in the same run, on its own
# throwaway PostgreSQL cluster:
#   ./infra/bench.sh provisioning   full tenant create vs a bare CREATE DATABASE … WAL_LOG
#   ./infra/bench.sh routing        M1–M3: routed requests vs one fixed pool, Zipf over 1,000
#                                   tenants under a budget, cold-tenant first request
#   ./infra/bench.sh                both
# Extra arguments go to `cargo bench`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
pg_bindir >/dev/null || "$INFRA_REPO_ROOT/infra/install.sh"
cd "$INFRA_REPO_ROOT"
case "${1:-all}" in
  provisioning|routing) bench="$1"; shift; cargo bench --workspace --bench "$bench" "$@" ;;
  all) [ $# -gt 0 ] && shift
       cargo bench --workspace --bench provisioning "$@"
       cargo bench --workspace --bench routing "$@" ;;
  *) die "unknown benchmark '$1' (provisioning, routing)" ;;
esac
