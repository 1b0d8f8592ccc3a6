//! Phase ids: the stable names in events, the journal and JSON output, with their titles.
//! A command's header is a list of these.

/// Every phase a command can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseId {
    Connect,
    Preflight,
    Prepare,
    Upload,
    Bootstrap,
    JoinServers,
    JoinAgents,
    Cluster,
    Dns,
    Enforcer,
    App,
    Verify,
    UninstallCheck,
    Snapshot,
    UninstallStop,
    UninstallClean,
    UninstallForget,
    UpgradeCheck,
    UpgradeServers,
    UpgradeAgents,
}

impl PhaseId {
    /// The stable id (`join-servers`).
    pub const fn id(self) -> &'static str {
        match self {
            PhaseId::Connect => "connect",
            PhaseId::Preflight => "preflight",
            PhaseId::Prepare => "prepare",
            PhaseId::Upload => "upload",
            PhaseId::Bootstrap => "bootstrap",
            PhaseId::JoinServers => "join-servers",
            PhaseId::JoinAgents => "join-agents",
            PhaseId::Cluster => "cluster",
            PhaseId::Dns => "dns",
            PhaseId::Enforcer => "enforcer",
            PhaseId::App => "app",
            PhaseId::Verify => "verify",
            PhaseId::UninstallCheck => "uninstall-check",
            PhaseId::Snapshot => "snapshot",
            PhaseId::UninstallStop => "stop",
            PhaseId::UninstallClean => "clean",
            PhaseId::UninstallForget => "forget",
            PhaseId::UpgradeCheck => "upgrade-check",
            PhaseId::UpgradeServers => "upgrade-servers",
            PhaseId::UpgradeAgents => "upgrade-agents",
        }
    }

    /// The title shown to the user.
    pub const fn title(self) -> &'static str {
        match self {
            PhaseId::Connect => "Connect and gather facts",
            PhaseId::Preflight => "Preflight checks",
            PhaseId::Prepare => "Prepare hosts",
            PhaseId::Upload => "Upload k3s and images",
            PhaseId::Bootstrap => "Bootstrap the first server",
            PhaseId::JoinServers => "Join the other servers, one at a time",
            PhaseId::JoinAgents => "Join the agents",
            PhaseId::Cluster => "Cluster gate",
            PhaseId::Dns => "Cluster DNS on the host network",
            PhaseId::Enforcer => "Policy enforcer",
            PhaseId::App => "Deploy the application",
            PhaseId::Verify => "Check the application's endpoints",
            PhaseId::UninstallCheck => "Check identity, mounts and recorded changes",
            PhaseId::Snapshot => "Copy an etcd snapshot to the workstation",
            PhaseId::UninstallStop => "Stop k3s and its containers",
            PhaseId::UninstallClean => "Remove k3s and undo the installer's changes",
            PhaseId::UninstallForget => "Delete the node from the cluster",
            PhaseId::UpgradeCheck => "Check versions and health before changing anything",
            PhaseId::UpgradeServers => "Upgrade the servers, one at a time",
            PhaseId::UpgradeAgents => "Upgrade the agents, one at a time",
        }
    }

    /// The ids of a list of phases (a command's header).
    pub fn ids(list: &[PhaseId]) -> Vec<&'static str> {
        list.iter().map(|p| p.id()).collect()
    }
}

/// The phases of `installer install`, in order.
pub const INSTALL: &[PhaseId] = &[
    PhaseId::Connect,
    PhaseId::Preflight,
    PhaseId::Prepare,
    PhaseId::Upload,
    PhaseId::Bootstrap,
    PhaseId::JoinServers,
    PhaseId::JoinAgents,
    PhaseId::Cluster,
    PhaseId::Dns,
    PhaseId::Enforcer,
    PhaseId::App,
    PhaseId::Verify,
];

/// The phases of `installer uninstall`.
pub const UNINSTALL: &[PhaseId] = &[
    PhaseId::Connect,
    PhaseId::UninstallCheck,
    PhaseId::Snapshot,
    PhaseId::UninstallStop,
    PhaseId::UninstallClean,
];

/// The phases of `installer upgrade`, in order.
pub const UPGRADE: &[PhaseId] = &[
    PhaseId::Connect,
    PhaseId::UpgradeCheck,
    PhaseId::Upload,
    PhaseId::Snapshot,
    PhaseId::UpgradeServers,
    PhaseId::UpgradeAgents,
    PhaseId::Dns,
    PhaseId::Enforcer,
    PhaseId::App,
    PhaseId::Verify,
];

/// The phases of `installer preflight`.
pub const PREFLIGHT: &[PhaseId] = &[PhaseId::Connect, PhaseId::Preflight];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_kebab_case() {
        let mut ids = PhaseId::ids(INSTALL);
        ids.extend(PhaseId::ids(&UNINSTALL[1..]));
        ids.extend(PhaseId::ids(&[
            PhaseId::UpgradeCheck,
            PhaseId::UpgradeServers,
            PhaseId::UpgradeAgents,
        ]));
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(
            ids.iter()
                .all(|i| i.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        );
    }
}
