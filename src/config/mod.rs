//! config
pub mod answer_file;
pub mod app;
pub mod check;
pub mod diagnostics;
pub mod interpolate;
pub mod schema;
pub mod yaml;
