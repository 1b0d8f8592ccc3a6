//! The artifacts the installer carries (k3s binary, k3s airgap images, application image
//! archives), embedded with `include_bytes!` when `assets/build.rs` found them verified.
//!
//! This crate is a leaf on purpose: it holds up to ~300 MB of bytes, so nothing that
//! changes often may live here (touching application code must not recompile it, see
//! docs/assets.md). The installer reads it through `installer::assets`, never directly.

/// One embedded artifact: its bytes are part of the binary and stream from there.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    /// The lock entry's name, e.g. `k3s-amd64`.
    pub name: &'static str,
    pub version: &'static str,
    /// The file name (in `assets/cache/`, in `--assets DIR`, and on the host for images).
    pub file: &'static str,
    /// SHA-256 (lower-case hex) verified at build time.
    pub sha256: &'static str,
    pub bytes: &'static [u8],
}

/// A lock entry this build does not carry.
#[derive(Debug, Clone, Copy)]
pub struct NotEmbedded {
    pub name: &'static str,
    /// Why, with what to do about it.
    pub reason: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// The embedded artifact of that lock name, if this build carries it.
pub fn find(name: &str) -> Option<&'static Embedded> {
    EMBEDDED.iter().find(|e| e.name == name)
}

/// Why the artifact of that lock name is not embedded, if it is not.
pub fn not_embedded_reason(name: &str) -> Option<&'static str> {
    NOT_EMBEDDED
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.reason)
}

#[cfg(test)]
mod plan;

#[cfg(test)]
mod tests;
