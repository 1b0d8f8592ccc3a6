//! The `installer` binary: parse the command line, set up output, call into the library,
//! map errors to exit codes.

fn main() {
    std::process::exit(installer::error::EXIT_USAGE);
}
