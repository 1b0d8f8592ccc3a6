//! The lab network: one host bridge per lab (`ilabN`, `10.77.N.1/24`) that the nodes' veths join.
//! Nodes get a default route via the bridge (k3s needs one), but the machine must never carry their
//! traffic anywhere else: host sysctls are never changed, and when the host already forwards
//! (`ip_forward=1`) an nftables table of the lab's own drops forwarded traffic to and from the bridge.
//! Also the conflict checks that make `up` refuse a bridge or subnet it did not create.

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::cmd::{self, command};
use super::layout::{Layout, PREFIX_LEN};

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct IpAddr {
    #[serde(default)]
    local: Option<String>,
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
}

/// True when a network interface named `name` exists.
pub(crate) fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Refuses to go on if the lab's bridge, addresses or subnet are used by something else.
/// `ours_bridge`: the bridge exists because this lab created it (recorded in its state).
pub(crate) fn check_free(layout: &Layout, ours_bridge: bool) -> Result<()> {
    let bridge = layout.bridge();
    if link_exists(&bridge) && !ours_bridge {
        bail!(
            "network interface {bridge} already exists and this lab did not create it\nhint: another tool uses it; choose another LAB_ID, or remove it if it is a leftover (`ip link del {bridge}`)"
        );
    }
    let out = cmd::run(command("ip")?.args(["-j", "-4", "addr", "show"]))?;
    let links: Vec<IpLink> = serde_json::from_str(&out).context("parsing `ip -j addr`")?;
    for l in &links {
        if ours_bridge && l.ifname == bridge {
            continue;
        }
        for a in &l.addr_info {
            if let Some(Ok(ip)) = a.local.as_deref().map(str::parse)
                && layout.contains(ip)
            {
                bail!(
                    "address {ip} on {} is inside the lab subnet {}/{PREFIX_LEN}\nhint: choose another LAB_ID",
                    l.ifname,
                    layout.subnet()
                );
            }
        }
    }
    let subnet = format!("{}/{PREFIX_LEN}", layout.subnet());
    let out = cmd::run(
        command("ip")?.args(["-j", "-4", "route", "show", "table", "all", "root", &subnet]),
    )?;
    let routes: Vec<IpRoute> =
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
            .context("parsing `ip -j route`")?;
    for r in routes {
        if ours_bridge && r.dev.as_deref() == Some(bridge.as_str()) {
            continue;
        }
        bail!(
            "route {} (dev {}) overlaps the lab subnet {subnet}\nhint: choose another LAB_ID",
            r.dst,
            r.dev.unwrap_or_default()
        );
    }
    Ok(())
}

/// Creates the bridge with the gateway address and brings it up.
pub(crate) fn create_bridge(layout: &Layout) -> Result<()> {
    let b = layout.bridge();
    cmd::run(command("ip")?.args(["link", "add", &b, "type", "bridge"]))
        .with_context(|| format!("creating bridge {b}"))?;
    Ok(())
}

/// Gives the bridge its address and brings it up (after [`create_bridge`] was recorded).
pub(crate) fn configure_bridge(layout: &Layout) -> Result<()> {
    let b = layout.bridge();
    let addr = format!("{}/{PREFIX_LEN}", layout.bridge_addr());
    cmd::run(command("ip")?.args(["addr", "add", &addr, "dev", &b]))?;
    cmd::run(command("ip")?.args(["link", "set", &b, "up"]))?;
    Ok(())
}

/// Deletes the bridge (only called when this lab created it).
pub(crate) fn delete_bridge(layout: &Layout) -> Result<()> {
    let b = layout.bridge();
    if link_exists(&b) {
        cmd::run(command("ip")?.args(["link", "del", &b]))?;
    }
    Ok(())
}

/// True when the host forwards IPv4 or IPv6 packets between interfaces. Read only; never changed.
pub(crate) fn host_forwards() -> bool {
    [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ]
    .iter()
    .any(|p| {
        std::fs::read_to_string(p)
            .map(|v| v.trim() != "0")
            .unwrap_or(false)
    })
}

/// The nftables ruleset of the forward-drop table. Traffic between two ports of the lab bridge
/// (iif and oif both the bridge, as seen with br_netfilter) stays allowed: nodes talk to each other.
pub(crate) fn nft_ruleset(layout: &Layout) -> String {
    let b = layout.bridge();
    format!(
        "table inet {t} {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n    iifname \"{b}\" oifname != \"{b}\" drop\n    oifname \"{b}\" iifname != \"{b}\" drop\n  }}\n}}\n",
        t = layout.nft_table()
    )
}

/// Adds the forward-drop table.
pub(crate) fn add_nft_table(layout: &Layout) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let f = dir.path().join("lab.nft");
    std::fs::write(&f, nft_ruleset(layout))?;
    cmd::run(command("nft")?.arg("-f").arg(&f))
        .context("adding the lab's forward-drop nftables table")?;
    Ok(())
}

/// True when the lab's nftables table exists (false if nft is not installed).
pub(crate) fn nft_table_exists(layout: &Layout) -> bool {
    match command("nft") {
        Ok(mut c) => c
            .args(["list", "table", "inet", &layout.nft_table()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Deletes the lab's nftables table if it exists.
pub(crate) fn delete_nft_table(layout: &Layout) -> Result<()> {
    if nft_table_exists(layout) {
        cmd::run(command("nft")?.args(["delete", "table", "inet", &layout.nft_table()]))?;
    }
    Ok(())
}

/// Sets the host side of node `k`'s veth down or up: the node keeps its address (its network file
/// sets `IgnoreCarrierLoss=yes`) but no packet passes, like a pulled cable or a dead switch port.
pub(crate) fn set_veth(layout: &Layout, k: usize, up: bool) -> Result<()> {
    let v = layout.veth(k);
    if !link_exists(&v) {
        bail!("{v} does not exist: is {} running?", Layout::node_name(k));
    }
    cmd::run(command("ip")?.args(["link", "set", &v, if up { "up" } else { "down" }]))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nft_table_only_drops_traffic_leaving_or_entering_the_bridge() {
        let r = nft_ruleset(&Layout::new(2).unwrap());
        assert!(r.contains("table inet installer_lab2"));
        assert!(r.contains("hook forward"));
        assert!(r.contains("iifname \"ilab2\" oifname != \"ilab2\" drop"));
        assert!(r.contains("oifname \"ilab2\" iifname != \"ilab2\" drop"));
    }

    #[test]
    fn nft_accepts_the_ruleset() {
        if !crate::lab::is_root() || cmd::find_tool("nft").is_none() {
            assert!(
                std::env::var_os("LAB_REQUIRED").is_none(),
                "LAB_REQUIRED is set, so this test may not skip: `nft -c` needs root and nftables"
            );
            eprintln!("skipped: `nft -c` needs root and nftables");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.nft");
        std::fs::write(&f, nft_ruleset(&Layout::new(9).unwrap())).unwrap();
        // -c: check only, the ruleset is not loaded.
        cmd::run(command("nft").unwrap().arg("-c").arg("-f").arg(&f)).unwrap();
    }
}
