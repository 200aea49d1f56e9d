//! The `portico` CLI built inside the test crate, so end-to-end tests can run it as a real
//! process (and kill it) via `CARGO_BIN_EXE_portico-under-test`.

fn main() -> std::process::ExitCode {
    portico_platform::cli::main()
}
