//! Hidden helpers for packagers: `installer completions <shell>` and `installer man`,
//! generated from the clap definitions so they never drift from the real flags.

use crate::cli::Cli;
use crate::error::Error;
use std::io::Write;

/// Prints a completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<(), Error> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "installer", out);
    Ok(())
}

/// Prints the man page (roff) for `installer`.
pub fn man(out: &mut dyn Write) -> Result<(), Error> {
    clap_mangen::Man::new(Cli::command())
        .render(out)
        .map_err(|e| Error::failed(e, None))
}
