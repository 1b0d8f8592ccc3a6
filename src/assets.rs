//! The artifacts the installer carries: see `assets/` (the lock file and the embedding crate).
