#!/usr/bin/env bash
# README command one: build (after installing samael's build packages and PostgreSQL's server
# binaries if missing) and run `portico demo`. Extra arguments go to the demo. Needs a Rust
# toolchain; Node.js is optional (the OpenID Connect part of the demo uses it).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$INFRA_REPO_ROOT/infra/build-deps.sh"
"$INFRA_REPO_ROOT/infra/pg-deps.sh"
cd "$INFRA_REPO_ROOT"
exec cargo run --bin portico -- demo "$@"
