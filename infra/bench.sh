#!/usr/bin/env bash
# The provisioning benchmark: full tenant create vs a bare CREATE DATABASE … TEMPLATE …
# STRATEGY WAL_LOG, medians and ratio from one run. Starts its own throwaway PostgreSQL cluster.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
pg_bindir >/dev/null || "$INFRA_REPO_ROOT/infra/install.sh"
cd "$INFRA_REPO_ROOT"
cargo bench --workspace --bench provisioning "$@"
