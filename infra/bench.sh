#!/usr/bin/env bash
# The benchmarks, each printing ratios against a baseline measured in the same run, on its own
# throwaway PostgreSQL cluster:
#   ./infra/bench.sh provisioning   full tenant create vs a bare CREATE DATABASE … WAL_LOG
#   ./infra/bench.sh routing        M1–M3: routed requests vs one fixed pool, Zipf over 1,000
#                                   tenants under a budget, cold-tenant first request
#   ./infra/bench.sh documents      encrypted vs plaintext content throughput (file store and
#                                   SeaweedFS S3), KMS calls per 10,000 document operations
#   ./infra/bench.sh fleet          M5–M6: fleet migration of 1,000 tenants under read load vs
#                                   one after another; fleet status and a no-op migrate
#   ./infra/bench.sh moves          a pooled tenant with 100,000 rows moved to a dedicated
#                                   database on a second cluster under read and write load
#   ./infra/bench.sh export         a dedicated tenant with 100,000 rows and 1 GiB of documents
#                                   exported and imported vs pg_dump -Fd / pg_restore plus raw
#                                   object reads / writes; peak RSS of both
#   ./infra/bench.sh                all six
# Extra arguments go to `cargo bench`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
pg_bindir >/dev/null || "$INFRA_REPO_ROOT/infra/install.sh"
cd "$INFRA_REPO_ROOT"
# The documents benchmark needs an S3 server and a KMS endpoint: throwaway ones, stopped after.
documents() {
  "$INFRA_REPO_ROOT/infra/install.sh"
  local run_dir; run_dir="$(mktemp -d "${TMPDIR:-/tmp}/portico-bench-XXXXXX")"
  trap '"$INFRA_REPO_ROOT/infra/moto.sh" stop "$run_dir/moto" || true; "$INFRA_REPO_ROOT/infra/seaweedfs.sh" stop "$run_dir/s3" || true; rm -rf "$run_dir" 2>/dev/null || true' RETURN
  export AWS_ACCESS_KEY_ID="portico-test" AWS_SECRET_ACCESS_KEY="portico-test-secret-key"
  export AWS_REGION="us-east-1" AWS_EC2_METADATA_DISABLED=true
  export_started "$INFRA_REPO_ROOT/infra/seaweedfs.sh" start "$run_dir/s3"
  export_started "$INFRA_REPO_ROOT/infra/moto.sh" start "$run_dir/moto"
  cargo bench --workspace --bench documents "$@"
}
case "${1:-all}" in
  provisioning|routing|fleet|moves|export) bench="$1"; shift; cargo bench --workspace --bench "$bench" "$@" ;;
  documents) shift; documents "$@" ;;
  all) [ $# -gt 0 ] && shift
       cargo bench --workspace --bench provisioning "$@"
       cargo bench --workspace --bench routing "$@"
       documents "$@"
       cargo bench --workspace --bench fleet "$@"
       cargo bench --workspace --bench moves "$@"
       cargo bench --workspace --bench export "$@" ;;
  *) die "unknown benchmark '$1' (provisioning, routing, documents, fleet, moves, export)" ;;
esac
