//! `installer schema`: the answer file's JSON Schema on stdout (the same text as the
//! checked-in `docs/answer-file.schema.json`; a test keeps them equal).

use crate::error::Error;
use std::io::Write;

/// Prints the schema.
pub fn run(out: &mut dyn Write) -> Result<(), Error> {
    let text = crate::config::schema_json().map_err(|e| Error::failed(e, None))?;
    out.write_all(text.as_bytes())
        .map_err(|e| Error::failed(e, None))
}
