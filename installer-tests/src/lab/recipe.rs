//! The base root filesystem every node boots from: Debian (debootstrap minbase) plus the packages in
//! `installer-tests/data/lab/packages.txt`, customised once by `data/lab/customize.sh`. Built once and
//! cached as a zstd tarball named by a hash of the recipe, so CI pays debootstrap only when the recipe
//! changes. The unpacked tree is cached beside it (read-only lower directory of every node's overlay),
//! so a warm `up` unpacks nothing. Recipe measured in ../shared/docs/lab.md.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::cmd::{self, command};
use super::layout::Layout;
use super::lock::FileLock;
use super::state::{mounts, remove_tree};

/// Debian release of the nodes (the same as the machine's).
pub const SUITE: &str = "bookworm";
/// Bump when the build steps below change in a way the recipe files do not show.
const BUILD_STEPS_VERSION: u32 = 1;
/// The package list (one per line, `#` comments).
pub const PACKAGES_TXT: &str = include_str!("../../data/lab/packages.txt");
/// The customisation script run inside the new root filesystem.
pub const CUSTOMIZE_SH: &str = include_str!("../../data/lab/customize.sh");

/// The packages of the recipe.
pub fn packages() -> Vec<&'static str> {
    PACKAGES_TXT
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Environment passed to customize.sh: the users and password the tests rely on.
fn customize_env() -> [(&'static str, &'static str); 3] {
    [
        ("LAB_NOPASSWD_USER", super::NOPASSWD_SUDO_USER),
        ("LAB_PASSWORD_USER", super::PASSWORD_SUDO_USER),
        ("LAB_PASSWORD", super::PASSWORD_SUDO_USER_PASSWORD),
    ]
}

/// Hash of everything that decides the content of the base (not the mirror it is fetched from).
pub fn recipe_hash() -> String {
    recipe_hash_of(SUITE, &packages(), CUSTOMIZE_SH)
}

fn recipe_hash_of(suite: &str, packages: &[&str], customize: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("installer-lab base v{BUILD_STEPS_VERSION}\0{suite}\0").as_bytes());
    for p in packages {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    h.update(b"\0");
    h.update(customize.as_bytes());
    for (k, v) in customize_env() {
        h.update(format!("\0{k}={v}").as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// The cached tarball of the current recipe.
pub fn tarball_path(cache: &Path) -> PathBuf {
    cache.join(format!("base-{}.tar.zst", recipe_hash()))
}

/// The cached unpacked tree of the current recipe.
pub fn rootfs_path(cache: &Path) -> PathBuf {
    cache.join(format!("rootfs-{}", recipe_hash()))
}

/// True when `up` can start without building (tarball or unpacked tree cached).
pub fn is_cached() -> bool {
    let cache = Layout::cache_dir();
    rootfs_path(&cache).is_dir() || tarball_path(&cache).is_file()
}

/// What [`ensure_base`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseOutcome {
    /// The unpacked tree was already there.
    Cached,
    /// The tarball was there and was unpacked.
    Unpacked,
    /// debootstrap ran.
    Built,
}

/// Makes sure the base root filesystem of the current recipe exists, building or unpacking it if
/// needed (under the cache lock, so concurrent labs build it once). `force` rebuilds from scratch.
pub fn ensure_base(force: bool) -> Result<(PathBuf, BaseOutcome)> {
    let cache = Layout::cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = FileLock::exclusive(&cache.join("build.lock"), "the base image cache")?;
    let rootfs = rootfs_path(&cache);
    let tarball = tarball_path(&cache);
    if force {
        for p in [&rootfs, &tarball] {
            refuse_if_in_use(p)?;
        }
        remove_tree(&rootfs)?;
        if tarball.exists() {
            std::fs::remove_file(&tarball)
                .with_context(|| format!("removing {}", tarball.display()))?;
        }
    }
    if rootfs.is_dir() {
        return Ok((rootfs, BaseOutcome::Cached));
    }
    let tmp = cache.join(format!("rootfs-{}.tmp", recipe_hash()));
    clean_tmp(&tmp)?;
    let outcome = if tarball.is_file() {
        eprintln!(
            "lab: unpacking the base root filesystem {}",
            tarball.display()
        );
        std::fs::create_dir_all(&tmp)?;
        cmd::run(
            command("tar")?
                .arg("-C")
                .arg(&tmp)
                .args(TAR_OPTS)
                .arg("--zstd")
                .arg("-xf")
                .arg(&tarball),
        )
        .context("unpacking the cached base root filesystem")?;
        BaseOutcome::Unpacked
    } else {
        debootstrap(&tmp, &cache)?;
        BaseOutcome::Built
    };
    std::fs::rename(&tmp, &rootfs)
        .with_context(|| format!("renaming {} to {}", tmp.display(), rootfs.display()))?;
    Ok((rootfs, outcome))
}

/// GNU tar options that keep ownership, modes and file capabilities (ping needs cap_net_raw).
const TAR_OPTS: &[&str] = &["--numeric-owner", "--xattrs", "--xattrs-include=*", "-p"];

fn clean_tmp(tmp: &Path) -> Result<()> {
    // A build killed half-way may have left debootstrap's /proc or /sys mounted inside: unmount
    // them first, never remove across a mount point.
    for m in super::state::mounts_under(tmp)? {
        let _ = cmd::run(command("umount")?.arg(&m));
    }
    remove_tree(tmp)
}

fn debootstrap(tmp: &Path, cache: &Path) -> Result<()> {
    let mirror = mirror()?;
    let log_path = cache.join(format!("build-{}.log", recipe_hash()));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!(
        "lab: building the base root filesystem with debootstrap ({SUITE}, recipe {}; about a minute or two; log {})",
        recipe_hash(),
        log_path.display()
    );
    let t = Instant::now();
    let mut c = command("debootstrap")?;
    c.arg("--variant=minbase")
        .arg(format!("--include={}", packages().join(",")))
        .arg(SUITE)
        .arg(tmp)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let status = c
        .status()
        .with_context(|| format!("running {}", cmd::describe(&c)))?;
    if !status.success() {
        let tail = tail_of(&log_path, 15);
        bail!(
            "debootstrap failed ({status}); last lines of {}:\n{tail}\nhint: the lab needs the Debian mirror {mirror} (set LAB_DEBIAN_MIRROR to use another)",
            log_path.display()
        );
    }
    // customize.sh runs in a chroot; it needs no /proc (systemctl --root=/ works offline).
    let script = tmp.join("tmp/lab-customize.sh");
    std::fs::write(&script, CUSTOMIZE_SH)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut c = command("chroot")?;
    c.arg(tmp)
        .arg("/bin/sh")
        .arg("/tmp/lab-customize.sh")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in customize_env() {
        c.env(k, v);
    }
    cmd::run(&mut c)
        .context("customising the base root filesystem (installer-tests/data/lab/customize.sh)")?;
    std::fs::remove_file(&script)?;
    // A 0700 root directory breaks systemd-networkd with 200/CHDIR (../shared/docs/lab.md).
    cmd::run(command("chmod")?.arg("0755").arg(tmp))?;
    let tarball = tarball_path(cache);
    let part = tarball.with_extension("zst.part");
    cmd::run(
        command("tar")?
            .arg("-C")
            .arg(tmp)
            .args(TAR_OPTS)
            .args(["-I", "zstd -T0 -3"])
            .arg("-cf")
            .arg(&part)
            .arg("."),
    )
    .context("packing the base root filesystem")?;
    std::fs::rename(&part, &tarball)?;
    eprintln!(
        "lab: base root filesystem built in {:.0?}: {}",
        t.elapsed(),
        tarball.display()
    );
    Ok(())
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn refuse_if_in_use(p: &Path) -> Result<()> {
    let needle = p.to_string_lossy().into_owned();
    if mounts()?
        .iter()
        .any(|m| m.fs_type == "overlay" && m.super_options.contains(&needle))
    {
        bail!(
            "{} is in use by a running lab\nhint: run `lab down` for every LAB_ID first",
            p.display()
        );
    }
    Ok(())
}

/// Removes cached bases of other recipes that no running lab uses; returns what was removed. Only
/// `lab build` calls it (never `up`: a lab of another checkout may be about to mount an older base).
pub fn prune_cache() -> Vec<PathBuf> {
    let cache = Layout::cache_dir();
    let mut removed = Vec::new();
    let Ok(_lock) = FileLock::exclusive(&cache.join("build.lock"), "the base image cache") else {
        return removed;
    };
    let keep = recipe_hash();
    let Ok(entries) = std::fs::read_dir(&cache) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_ours = (name.starts_with("rootfs-")
            || name.starts_with("base-")
            || name.starts_with("build-"))
            && !name.contains(&keep);
        if !is_ours || refuse_if_in_use(&e.path()).is_err() {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() {
            remove_tree(&p)
        } else {
            std::fs::remove_file(&p).map_err(Into::into)
        };
        if r.is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// The Debian mirror: `LAB_DEBIAN_MIRROR`, else the one this machine's apt uses for the suite.
pub fn mirror() -> Result<String> {
    if let Ok(m) = std::env::var("LAB_DEBIAN_MIRROR")
        && !m.trim().is_empty()
    {
        return Ok(m.trim().to_string());
    }
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, t));
    }
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let deb822 = p.extension().is_some_and(|e| e == "sources");
            let list = p.extension().is_some_and(|e| e == "list");
            if (deb822 || list)
                && let Ok(t) = std::fs::read_to_string(&p)
            {
                texts.push((deb822, t));
            }
        }
    }
    texts
        .iter()
        .find_map(|(deb822, t)| if *deb822 { mirror_from_deb822(t, SUITE) } else { mirror_from_list(t, SUITE) })
        .with_context(|| {
            format!(
                "no Debian mirror for {SUITE} found in /etc/apt/sources.list(.d)\nhint: set LAB_DEBIAN_MIRROR to a Debian mirror URL"
            )
        })
}

fn mirror_from_list(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.split('#').next()?.trim();
        let mut words = l.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut w = words.next()?;
        if w.starts_with('[') {
            // options: skip to the closing bracket
            while !w.ends_with(']') {
                w = words.next()?;
            }
            w = words.next()?;
        }
        let uri = w;
        (words.next()? == suite).then(|| uri.to_string())
    })
}

fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let mut uri = None;
        let mut suites_ok = false;
        let mut enabled = true;
        let mut is_deb = false;
        for l in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if let Some((k, v)) = l.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "types" => is_deb = v.split_whitespace().any(|t| t == "deb"),
                    "uris" => uri = v.split_whitespace().next().map(str::to_string),
                    "suites" => suites_ok = v.split_whitespace().any(|s| s == suite),
                    "enabled" => enabled = v.trim() != "no",
                    _ => {}
                }
            }
        }
        (is_deb && suites_ok && enabled).then_some(uri).flatten()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_has_what_the_issue_and_lab_md_ask_for() {
        let p = packages();
        for want in [
            "systemd",
            "openssh-server",
            "iproute2",
            "nftables",
            "iptables",
            "sudo",
            "curl",
            "chrony",
            "openssh-sftp-server",
        ] {
            assert!(p.contains(&want), "missing {want}: {p:?}");
        }
        assert!(!p.iter().any(|x| x.starts_with('#') || x.contains(' ')));
    }

    #[test]
    fn the_hash_changes_with_the_recipe_and_only_with_it() {
        let base = recipe_hash_of(SUITE, &packages(), CUSTOMIZE_SH);
        assert_eq!(base, recipe_hash(), "same inputs, same hash");
        let mut more = packages();
        more.push("vim");
        assert_ne!(base, recipe_hash_of(SUITE, &more, CUSTOMIZE_SH));
        assert_ne!(
            base,
            recipe_hash_of(SUITE, &packages(), &format!("{CUSTOMIZE_SH}\ntrue\n"))
        );
        assert_ne!(base, recipe_hash_of("trixie", &packages(), CUSTOMIZE_SH));
        assert_eq!(base.len(), 16);
    }

    #[test]
    fn finds_the_mirror_in_one_line_and_deb822_sources() {
        let list =
            "# c\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main\n";
        assert_eq!(
            mirror_from_list(list, "bookworm").as_deref(),
            Some("http://mirror.invalid/debian")
        );
        assert_eq!(
            mirror_from_list("deb http://m.invalid/d bookworm-updates main", "bookworm"),
            None
        );
        let d = "Types: deb\nURIs: http://a.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                 Types: deb\nURIs: http://b.invalid/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_deb822(d, "bookworm").as_deref(),
            Some("http://a.invalid/debian")
        );
        let disabled = "Types: deb\nURIs: http://a.invalid/debian\nSuites: bookworm\nEnabled: no\n";
        assert_eq!(mirror_from_deb822(disabled, "bookworm"), None);
    }

    #[test]
    fn customize_gets_the_users_the_tests_use() {
        for (k, _) in customize_env() {
            assert!(CUSTOMIZE_SH.contains(k), "customize.sh does not use {k}");
        }
    }
}
