//! The command line (clap types only).
