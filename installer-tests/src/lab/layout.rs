//! Every name, address and path of one lab, derived from its `LAB_ID` (0..=9), so that several labs
//! can run side by side on one machine without touching each other's bridge, subnet, machines,
//! cgroups, state or lock. Nothing here touches the system; it only computes names.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Highest accepted `LAB_ID`.
pub const MAX_LAB_ID: u8 = 9;
/// Most nodes one lab can have.
pub const MAX_NODES: usize = 5;
/// Prefix length of the lab subnet.
pub const PREFIX_LEN: u8 = 24;

/// Where the state of every lab lives (one directory per `LAB_ID`, plus its lock file).
/// On disk, not in /run: overlay upper directories and `/var/lib/rancher` can grow.
pub const STATE_ROOT: &str = "/var/tmp/installer-lab";
/// Default cache of the base root filesystem (tarball and unpacked tree), shared by every `LAB_ID`.
/// Overridden by the `LAB_CACHE_DIR` environment variable.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/installer-lab";

/// The names, addresses and paths of lab number `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    id: u8,
}

impl Layout {
    /// The layout of lab `id`; refuses ids above [`MAX_LAB_ID`].
    pub fn new(id: u8) -> Result<Self> {
        if id > MAX_LAB_ID {
            bail!(
                "LAB_ID {id} is out of range\nhint: LAB_ID must be an integer from 0 to {MAX_LAB_ID}"
            );
        }
        Ok(Self { id })
    }

    /// The layout named by the `LAB_ID` environment variable (0 when unset).
    pub fn from_env() -> Result<Self> {
        match std::env::var("LAB_ID") {
            Err(std::env::VarError::NotPresent) => Self::new(0),
            Err(e) => Err(e).context("reading LAB_ID"),
            Ok(v) if v.trim().is_empty() => Self::new(0),
            Ok(v) => {
                let id: u8 = v.trim().parse().map_err(|_| {
                    anyhow::anyhow!(
                        "LAB_ID={v:?} is not a number\nhint: LAB_ID must be an integer from 0 to {MAX_LAB_ID}"
                    )
                })?;
                Self::new(id)
            }
        }
    }

    /// The lab number.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Host bridge the nodes' veths are attached to, e.g. `ilab1`.
    pub fn bridge(&self) -> String {
        format!("ilab{}", self.id)
    }

    /// Address of the bridge on the host: the nodes' gateway, e.g. `10.77.1.1`.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.id, 1)
    }

    /// Network address of the lab subnet, e.g. `10.77.1.0` (prefix [`PREFIX_LEN`]).
    pub fn subnet(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.id, 0)
    }

    /// True when `addr` lies inside the lab subnet.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let o = addr.octets();
        o[0] == 10 && o[1] == 77 && o[2] == self.id
    }

    /// Address of node `k` (1-based), e.g. `10.77.1.11` for node 1.
    pub fn node_addr(&self, k: usize) -> Ipv4Addr {
        // k <= MAX_NODES, so 10 + k always fits in an octet.
        Ipv4Addr::new(10, 77, self.id, 10 + (k as u8))
    }

    /// Short node name used by the CLI and tests: `node1` .. `node5`. Also the node's hostname.
    pub fn node_name(k: usize) -> String {
        format!("node{k}")
    }

    /// Parses `node3` (or `3`) into 3.
    pub fn parse_node_name(s: &str) -> Option<usize> {
        let n = s.strip_prefix("node").unwrap_or(s);
        n.parse::<usize>()
            .ok()
            .filter(|k| (1..=MAX_NODES).contains(k))
    }

    /// The systemd-nspawn machine name (also the cgroup name) of node `k`, e.g. `lab1-node2`.
    pub fn machine(&self, k: usize) -> String {
        format!("lab{}-node{k}", self.id)
    }

    /// Prefix shared by every machine and cgroup of this lab, e.g. `lab1-node`.
    pub fn machine_prefix(&self) -> String {
        format!("lab{}-node", self.id)
    }

    /// Host side of node `k`'s veth pair. systemd-nspawn names it `vb-` + machine name when that fits
    /// in 15 characters (src/nspawn/nspawn-network.c, `add_veth`), which holds for `lab9-node5`.
    pub fn veth(&self, k: usize) -> String {
        format!("vb-{}", self.machine(k))
    }

    /// nftables table (family inet) that drops forwarded lab traffic when the host forwards.
    pub fn nft_table(&self) -> String {
        format!("installer_lab{}", self.id)
    }

    /// Directory holding every lab's state.
    pub fn state_root() -> PathBuf {
        PathBuf::from(STATE_ROOT)
    }

    /// This lab's state directory: keys, known_hosts, answer file, node overlays.
    pub fn state_dir(&self) -> PathBuf {
        Self::state_root().join(self.id.to_string())
    }

    /// Lock file serialising every user of this `LAB_ID` (kept on `down`: removing a lock file races).
    pub fn lock_path(&self) -> PathBuf {
        Self::state_root().join(format!("{}.lock", self.id))
    }

    /// The state file recording what `up` created.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// Node `k`'s directory: `upper`, `work`, `merged`, `rancher`, `console.log`.
    pub fn node_dir(&self, k: usize) -> PathBuf {
        self.state_dir().join(Self::node_name(k))
    }

    /// The lab's private key (ed25519, no passphrase).
    pub fn key_path(&self) -> PathBuf {
        self.state_dir().join("id_ed25519")
    }

    /// The same ed25519 key, encrypted with [`super::ENCRYPTED_KEY_PASSPHRASE`].
    pub fn encrypted_key_path(&self) -> PathBuf {
        self.state_dir().join("id_ed25519_encrypted")
    }

    /// A second lab key of type RSA (3072 bits, no passphrase).
    pub fn rsa_key_path(&self) -> PathBuf {
        self.state_dir().join("id_rsa")
    }

    /// known_hosts with each node's real host key.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.state_dir().join("known_hosts")
    }

    /// The answer file describing the lab.
    pub fn answer_file_path(&self) -> PathBuf {
        self.state_dir().join("answer.yaml")
    }

    /// Cache directory of base root filesystems (`LAB_CACHE_DIR` or [`DEFAULT_CACHE_DIR`]).
    pub fn cache_dir() -> PathBuf {
        match std::env::var_os("LAB_CACHE_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(DEFAULT_CACHE_DIR),
        }
    }

    /// True when `path` is this lab's state directory or inside it.
    pub fn owns_path(&self, path: &Path) -> bool {
        path.starts_with(self.state_dir())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_derive_from_the_id() {
        let l = Layout::new(3).unwrap();
        assert_eq!(l.bridge(), "ilab3");
        assert_eq!(l.bridge_addr(), Ipv4Addr::new(10, 77, 3, 1));
        assert_eq!(l.node_addr(1), Ipv4Addr::new(10, 77, 3, 11));
        assert_eq!(l.node_addr(5), Ipv4Addr::new(10, 77, 3, 15));
        assert_eq!(l.machine(2), "lab3-node2");
        assert_eq!(l.veth(2), "vb-lab3-node2");
        assert_eq!(l.state_dir(), PathBuf::from("/var/tmp/installer-lab/3"));
        assert_eq!(
            l.lock_path(),
            PathBuf::from("/var/tmp/installer-lab/3.lock")
        );
        assert!(l.contains(Ipv4Addr::new(10, 77, 3, 200)));
        assert!(!l.contains(Ipv4Addr::new(10, 77, 4, 11)));
    }

    #[test]
    fn veth_names_fit_the_kernel_limit_for_every_id_and_node() {
        for id in 0..=MAX_LAB_ID {
            let l = Layout::new(id).unwrap();
            for k in 1..=MAX_NODES {
                assert!(l.veth(k).len() <= 15, "{}", l.veth(k));
                assert!(l.bridge().len() <= 15);
            }
        }
    }

    #[test]
    fn refuses_ids_above_nine() {
        let err = Layout::new(10).unwrap_err().to_string();
        assert!(err.contains("LAB_ID 10 is out of range"), "{err}");
        assert!(err.contains("hint:"), "{err}");
    }

    #[test]
    fn parses_node_names() {
        assert_eq!(Layout::parse_node_name("node3"), Some(3));
        assert_eq!(Layout::parse_node_name("5"), Some(5));
        assert_eq!(Layout::parse_node_name("node6"), None);
        assert_eq!(Layout::parse_node_name("node0"), None);
        assert_eq!(Layout::parse_node_name("web"), None);
    }
}
