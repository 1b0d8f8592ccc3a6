//! The top-level error type and the exit codes it maps to.
//!
//! Exit codes (documented in README.md and `installer --help`):
//! 0 success, 1 failed, 2 bad input or usage, 130 interrupted.

/// Exit code: everything worked.
pub const EXIT_OK: i32 = 0;
/// Exit code: the command ran and failed (a host, a phase, a gate).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: bad input (answer file, flags) or usage; nothing was changed on any host.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: interrupted (Ctrl-C); a rerun continues where this one stopped.
pub const EXIT_INTERRUPTED: i32 = 130;
