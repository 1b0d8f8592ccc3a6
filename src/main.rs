//! The `installer` binary: parse the command line, hand it to the library, exit with the
//! code it returns (0 ok, 1 failed, 2 bad input or usage, 130 interrupted).

use clap::Parser;
use installer::error::{EXIT_OK, EXIT_USAGE};

fn main() {
    // TLS (the Kubernetes API, health probes) uses rustls with the ring provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match installer::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    std::process::exit(installer::commands::dispatch(cli));
}
