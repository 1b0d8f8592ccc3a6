//! Image archives with real root filesystems, built on this machine from Debian's packages, for
//! images the lab runs for real (the stand-in's kubelet runs them with runc,
//! `standin::kubelet::runc`).
//!
//! Each is laid out as the real image is, as far as the templates and tests rely on it; how each
//! differs from the real one is written down in docs/testing.md ("The lab's images").
//!
//! - busybox (`docker.io/library/busybox:1.37.0`, k3s's `rancher/mirrored-library-busybox`):
//!   Debian's `busybox-static` at `/bin/busybox` with a link per applet in `/bin`, `/etc/passwd`
//!   and `/etc/group` as the official image has them (root, daemon, nobody…), `Cmd ["sh"]`.
//! - the policy enforcer (`localhost/installer-enforcer`, assets/enforcer/Dockerfile): this
//!   workspace's `enforcer` and Debian's `nft`, each with its shared libraries.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::rootfs_images::{ImageConfig, Layer, LayeredImage};

/// Where Debian's busybox-static installs busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// The busybox image's `/etc/passwd` (as the official image ships it).
const BUSYBOX_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nbin:x:2:2:bin:/bin:/bin/false\nsys:x:3:3:sys:/dev:/bin/false\nsync:x:4:100:sync:/bin:/bin/sync\nmail:x:8:8:mail:/var/spool/mail:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\noperator:x:37:37:Operator:/var:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
const BUSYBOX_GROUP: &str = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\nwheel:x:10:root\nmail:x:8:\nwww-data:x:33:\noperator:x:37:\nstaff:x:50:\nusers:x:100:\nnogroup:x:65533:\nnobody:x:65534:\n";

/// Whether this machine can build the busybox image (Debian's `busybox-static`).
pub fn have_busybox() -> bool {
    let p = Path::new(BUSYBOX);
    p.exists()
        && crate::rootfs_images::shared_libraries(p)
            .map(|l| l.is_empty())
            .unwrap_or(false)
}

/// The busybox root filesystem layer (usable as the base of other images).
pub fn busybox_layer() -> Result<Layer> {
    if !have_busybox() {
        bail!(
            "{BUSYBOX} is missing or not static\nhint: install the Debian package busybox-static (the lab builds its busybox image from it)"
        );
    }
    let mut l = Layer::new();
    l.host_file("bin/busybox", Path::new(BUSYBOX))?;
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let a = applet.trim();
        if a.is_empty() || a == "busybox" || a.contains('/') {
            continue;
        }
        l.symlink(&format!("bin/{a}"), "busybox")?;
    }
    l.file("etc/passwd", BUSYBOX_PASSWD.as_bytes(), 0o644)?;
    l.file("etc/group", BUSYBOX_GROUP.as_bytes(), 0o644)?;
    l.dir("tmp", 0o1777)?;
    l.dir("root", 0o700)?;
    l.dir("var/www", 0o755)?;
    for d in ["dev", "proc", "sys", "etc", "home", "usr", "var"] {
        l.dir(d, 0o755)?;
    }
    Ok(l)
}

/// The policy enforcer's image (assets/enforcer/Dockerfile) as the lab builds it: `enforcer`,
/// this workspace's binary (`binary`, stripped when `strip` is there), at
/// `/usr/local/bin/enforcer`, and this machine's `nft` (Debian's `nftables`) at `/usr/sbin/nft`,
/// each with the shared libraries it loads; `Entrypoint ["/usr/local/bin/enforcer"]`. The real
/// image has Debian 12's whole slim root filesystem around them.
pub fn enforcer(reference: &str, binary: &Path) -> Result<LayeredImage> {
    let nft = Path::new(NFT);
    if !nft.exists() {
        bail!(
            "{NFT} is missing\nhint: install the Debian package nftables (the lab's enforcer image carries it)"
        );
    }
    let dir = tempfile::tempdir()?;
    let stripped = dir.path().join("enforcer");
    std::fs::copy(binary, &stripped)
        .with_context(|| format!("copy {} to {}", binary.display(), stripped.display()))?;
    // Debug info and symbols are most of a debug build (43 MB stripped of debug info, 30 MB of
    // everything); without `strip` the image is only larger.
    let _ = std::process::Command::new("strip")
        .arg("--strip-all")
        .arg(&stripped)
        .status();
    let mut l = Layer::new();
    l.host_program("usr/local/bin/enforcer", &stripped)?;
    l.host_program("usr/sbin/nft", nft)?;
    l.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", 0o644)?;
    l.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    l.dir("tmp", 0o1777)?;
    for d in ["dev", "proc", "sys", "run", "var", "root"] {
        l.dir(d, 0o755)?;
    }
    Ok(LayeredImage {
        name: reference.to_string(),
        layers: vec![l.finish()?],
        config: ImageConfig {
            entrypoint: Some(vec!["/usr/local/bin/enforcer".into()]),
            env: Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ]),
            ..Default::default()
        },
    })
}

/// Where Debian's nftables installs nft.
pub const NFT: &str = "/usr/sbin/nft";

/// The busybox image under `reference`.
pub fn busybox(reference: &str) -> Result<LayeredImage> {
    Ok(LayeredImage {
        name: reference.to_string(),
        layers: vec![busybox_layer()?.finish()?],
        config: ImageConfig {
            cmd: Some(vec!["sh".into()]),
            env: Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ]),
            ..Default::default()
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn busybox_has_its_applets_and_users() {
        if !have_busybox() {
            // The lab's prerequisites include busybox-static; CI installs it.
            assert!(
                std::env::var_os("LAB_REQUIRED").is_none(),
                "busybox-static is missing"
            );
            return;
        }
        let img = busybox("busybox:1.37.0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        crate::rootfs_images::apply_layer(
            Box::new(std::io::Cursor::new(img.layers[0].clone())),
            dir.path(),
        )
        .unwrap();
        for a in ["sh", "httpd", "wget", "nc", "base64", "sleep"] {
            assert_eq!(
                std::fs::read_link(dir.path().join("bin").join(a)).unwrap(),
                Path::new("busybox"),
                "{a}"
            );
        }
        let passwd = std::fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("nobody:x:65534"));
    }
}
