//! Test support: the lab, the k3s stand-in, and helpers for end-to-end tests.

pub mod bench;
pub mod demo;
pub mod e2e;
pub mod images;
pub mod lab;
pub mod lab_images;
pub mod payload;
pub mod pty;
pub mod rootfs_images;
pub mod standin;
