//! Configuration: the answer file (raw), its validation, and the resulting [`Plan`].
//!
//! ```text
//! answers.yaml --yaml::parse--> Node tree --schema::check--> AnswerFile (raw)
//!              --validate--> Plan (immutable)  + every problem with file:line:col and a hint
//! ```
//! The wizard fills in an [`AnswerFile`] and saves it; install reads it back through the
//! same [`load_file`], so interactive and unattended installs share one path.

pub mod answer_file;
pub mod app;
pub mod check;
pub mod core_json;
pub mod diagnostics;
pub mod interpolate;
pub mod plan;
pub mod schema;
pub mod validate;
pub mod wizard;
pub mod yaml;

pub use answer_file::AnswerFile;
pub use diagnostics::{Diagnostic, Diagnostics, Severity};
pub use plan::Plan;
pub use validate::{Context, LoadError, Loaded, Prompter, load_file, validate_text};

/// The answer file's JSON Schema as pretty-printed JSON (what `installer schema` prints and
/// `docs/answer-file.schema.json` holds), for the embedded application declaration.
pub fn schema_json() -> Result<String, app::DeclarationError> {
    let decl = app::Declaration::embedded()?;
    let schema = schema::json_schema(&decl);
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&schema).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests;
