//! The `portico` binary: all logic lives in the library.

fn main() -> std::process::ExitCode {
    portico_platform::cli::main()
}
