//! The embedded artifacts.
