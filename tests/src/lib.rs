//! End-to-end tests of Portico live in `e2e/` (one integration-test binary with modules) and the
//! provisioning benchmark in `benches/`. Both need the services `infra/test.sh` starts.
