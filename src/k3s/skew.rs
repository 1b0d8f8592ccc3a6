//! The version rules an upgrade must refuse before it changes anything (issue 14;
//! `installer upgrade` runs them in its `upgrade-check` phase, `phases::upgrade::judge`).
//!
//! Pure: it takes the versions the nodes run (as `k3s --version` / `kubeletVersion` print
//! them) and the target version the installer carries, and says whether the hop is
//! allowed, already done, or refused, each refusal naming the node(s), both versions and
//! what to do (through [`crate::hint::Hint`]).
//!
//! The rules come from `shared/docs/upgrade.md` §1.2 and §7.2, which cite the Kubernetes
//! version skew policy (kubernetes.io/releases/version-skew-policy) and k3s's upgrade docs:
//! - no downgrade, not even of the `+k3sN` revision (k3s#7537: k3s-upgrade refuses them;
//!   etcd never lowers its cluster version);
//! - at most one minor version per hop from any node (k3s: "don't skip minors");
//! - a source at least at the minimum patch a hop needs ([`HOP_MINIMUMS`]);
//! - no agent (kubelet) on a newer minor than any server (apiserver);
//! - servers (HA apiservers) within one minor of each other.
//!
//! An agent one minor *older* than servers that are already on the target is fine: a
//! kubelet may be up to three minors older than the apiserver, and upgrade.md has the
//! agents follow all servers (that is the state a server phase leaves behind).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A k3s release version: `v1.36.4+k3s1` is major 1, minor 36, patch 4, k3s revision 1.
///
/// Ordered by (major, minor, patch, revision), which is k3s's release order within one
/// line (`+k3s2` is a respin of the same Kubernetes patch, newer than `+k3s1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// The `N` of `+k3sN`.
    pub k3s: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32, k3s: u32) -> Self {
        Version {
            major,
            minor,
            patch,
            k3s,
        }
    }

    /// Same major and minor (`v1.36`).
    fn same_line(&self, other: &Version) -> bool {
        self.major == other.major && self.minor == other.minor
    }

    /// How many minors `self` is behind `newer` (None across majors: no such hop exists).
    fn minors_behind(&self, newer: &Version) -> Option<u32> {
        (self.major == newer.major).then(|| newer.minor.saturating_sub(self.minor))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{}.{}.{}+k3s{}",
            self.major, self.minor, self.patch, self.k3s
        )
    }
}

/// A version string that is not a k3s release version.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{input}` is not a k3s release version like v1.36.4+k3s1: {problem}")]
pub struct ParseVersionError {
    pub input: String,
    pub problem: &'static str,
}

impl FromStr for Version {
    type Err = ParseVersionError;

    /// Parses `v1.36.4+k3s1` (the leading `v` is optional). Pre-releases (`-rc1`) and
    /// anything after the revision are refused: an upgrade is only planned between
    /// releases.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem| ParseVersionError {
            input: s.to_owned(),
            problem,
        };
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let (kube, rev) = t
            .split_once('+')
            .ok_or_else(|| err("no `+k3sN` revision"))?;
        if kube.contains('-') {
            return Err(err(
                "pre-release versions are not upgrade sources or targets",
            ));
        }
        let rev = rev
            .strip_prefix("k3s")
            .ok_or_else(|| err("the revision must be `k3sN`"))?;
        let number = |part: &str, what| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(what));
            }
            part.parse::<u32>().map_err(|_| err(what))
        };
        let mut parts = kube.split('.');
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected major.minor.patch"));
        };
        Ok(Version {
            major: number(major, "the major version is not a number")?,
            minor: number(minor, "the minor version is not a number")?,
            patch: number(patch, "the patch version is not a number")?,
            k3s: number(rev, "the k3s revision is not a number")?,
        })
    }
}

/// A hop that needs its source at a minimum patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopMinimum {
    /// The source line (`major`, `minor`) the rule applies to, when the target is the next
    /// minor.
    pub from: (u32, u32),
    /// The oldest source release allowed on that line.
    pub minimum: Version,
    /// Why, for the refusal.
    pub reason: &'static str,
}

/// The minimum source patch per hop (upgrade.md §1.2, "keep a minimum source patch per
/// hop"; §7.2 "the 3.5.26 rule").
///
/// k3s 1.34 carries etcd 3.6. etcd's maintainers say the only safe 3.5 → 3.6 upgrade is
/// from etcd ≥ 3.5.26 (etcd.io/blog/2025/zombie_members_upgrade, k3s#13271, k3s#13485:
/// v1.33.7+k3s1, etcd 3.5.x, failed to reach v1.34.3+k3s1 with zombie members).
/// k3s backported 3.5.26 to release-1.33 in PR #13493 (merged 2026-01-23, after
/// v1.33.7+k3s1 shipped). v1.33.8+k3s1 is taken as the first 1.33 release carrying it:
/// an inference from those dates, NOT checked against the k3s release notes (a
/// `v1.33.7+k3s2/3` respin may carry it too; refusing it is the safe side). Confirm
/// against the v1.33.x release notes before relying on the exact patch.
pub const HOP_MINIMUMS: &[HopMinimum] = &[HopMinimum {
    from: (1, 33),
    minimum: Version::new(1, 33, 8, 1),
    reason: "k3s 1.34 moves etcd from 3.5 to 3.6, which is only safe from etcd 3.5.26 or later",
}];

/// One node and the version it runs.
pub type NodeVersion<'a> = (&'a str, Version);

/// Why a hop is refused. Every variant names the node(s) and versions involved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("no server given: an upgrade needs the servers' versions")]
    NoServers,

    #[error("downgrade refused: {node} runs {running}, newer than the target {target}")]
    Downgrade {
        node: String,
        running: Version,
        target: Version,
    },

    #[error(
        "{node} runs {running}: the target {target} is {} minor versions ahead, and k3s must be upgraded one minor at a time",
        running.minors_behind(target).map_or_else(|| "several".to_owned(), |n| n.to_string())
    )]
    MinorJump {
        node: String,
        running: Version,
        target: Version,
    },

    #[error(
        "{node} runs {running}, below {minimum}, the oldest release that may be upgraded to {target}: {reason}"
    )]
    BelowHopMinimum {
        node: String,
        running: Version,
        target: Version,
        minimum: Version,
        reason: &'static str,
    },

    #[error(
        "agent {agent} runs {agent_version}, a newer minor than server {server} ({server_version}): a kubelet must never be newer than an apiserver"
    )]
    AgentNewerThanServer {
        agent: String,
        agent_version: Version,
        server: String,
        server_version: Version,
    },

    #[error(
        "servers {oldest} ({oldest_version}) and {newest} ({newest_version}) are more than one minor version apart"
    )]
    ServersTooFarApart {
        oldest: String,
        oldest_version: Version,
        newest: String,
        newest_version: Version,
    },
}

impl Refusal {
    /// What the operator can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Refusal::NoServers => {
                "this is a bug in the installer (the upgrade was planned without servers): please report it"
                    .into()
            }
            Refusal::Downgrade { running, .. } => format!(
                "an upgrade never goes back (etcd cannot lower its data version); use an installer that carries {running} or newer"
            ),
            Refusal::MinorJump {
                running, target, ..
            } => match running.minors_behind(target) {
                Some(_) => format!(
                    "upgrade to v{}.{}.x first with that release's installer, then run this one",
                    running.major,
                    running.minor + 1
                ),
                None => format!(
                    "there is no supported upgrade from {running} to {target}: ask the vendor for the upgrade path"
                ),
            },
            Refusal::BelowHopMinimum {
                minimum, running, ..
            } => format!(
                "upgrade to {minimum} or a later v{}.{} release first with that release's installer, then run this one",
                running.major, running.minor
            ),
            Refusal::AgentNewerThanServer { agent_version, .. } => format!(
                "the cluster is already outside the Kubernetes version skew policy: bring every server to v{}.{} first, then run this upgrade",
                agent_version.major, agent_version.minor
            ),
            Refusal::ServersTooFarApart {
                oldest,
                newest_version,
                ..
            } => format!(
                "the cluster is already outside the skew policy for HA apiservers: bring {oldest} to v{}.{}.x (or one minor below) first",
                newest_version.major, newest_version.minor
            ),
        })
    }
}

/// The outcome of [`check_hop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopCheck {
    /// Every node already runs the target: nothing to do.
    UpToDate,
    /// The hop breaks no version rule (other preconditions are checked elsewhere).
    Allowed,
    /// The hop must not start; each refusal is one line with its hint.
    Refused(Vec<Refusal>),
}

/// Checks the version rules of an upgrade of `servers` and `agents` to `target`.
pub fn check_hop(
    servers: &[NodeVersion<'_>],
    agents: &[NodeVersion<'_>],
    target: &Version,
) -> HopCheck {
    let (Some(oldest), Some(newest)) = (
        servers.iter().min_by(|a, b| a.1.cmp(&b.1)),
        servers.iter().max_by(|a, b| a.1.cmp(&b.1)),
    ) else {
        return HopCheck::Refused(vec![Refusal::NoServers]);
    };
    if servers.iter().chain(agents).all(|(_, v)| v == target) {
        return HopCheck::UpToDate;
    }

    let mut refusals = Vec::new();

    // The state the cluster is in, before any hop.
    let cmp_minor = |a: &Version, b: &Version| (a.major, a.minor).cmp(&(b.major, b.minor));
    if oldest.1.minors_behind(&newest.1).is_none_or(|n| n > 1) {
        refusals.push(Refusal::ServersTooFarApart {
            oldest: oldest.0.to_owned(),
            oldest_version: oldest.1,
            newest: newest.0.to_owned(),
            newest_version: newest.1,
        });
    }
    for (agent, v) in agents {
        if cmp_minor(v, &oldest.1) == Ordering::Greater {
            refusals.push(Refusal::AgentNewerThanServer {
                agent: (*agent).to_owned(),
                agent_version: *v,
                server: oldest.0.to_owned(),
                server_version: oldest.1,
            });
        }
    }

    // The hop each node would make.
    for (is_server, (node, running)) in servers
        .iter()
        .map(|n| (true, n))
        .chain(agents.iter().map(|n| (false, n)))
    {
        let node = (*node).to_owned();
        let running = *running;
        if running > *target {
            refusals.push(Refusal::Downgrade {
                node,
                running,
                target: *target,
            });
            continue;
        }
        if running.minors_behind(target).is_none_or(|n| n > 1) {
            refusals.push(Refusal::MinorJump {
                node,
                running,
                target: *target,
            });
            continue;
        }
        // The hop minimums are about etcd, which runs only on servers.
        if is_server && !running.same_line(target) {
            let below = HOP_MINIMUMS
                .iter()
                .find(|m| m.from == (running.major, running.minor) && running < m.minimum);
            if let Some(m) = below {
                refusals.push(Refusal::BelowHopMinimum {
                    node,
                    running,
                    target: *target,
                    minimum: m.minimum,
                    reason: m.reason,
                });
            }
        }
    }

    if refusals.is_empty() {
        HopCheck::Allowed
    } else {
        HopCheck::Refused(refusals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hint::Hint;

    fn v(s: &str) -> Version {
        match s.parse() {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    fn refusals(check: HopCheck) -> Vec<Refusal> {
        match check {
            HopCheck::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Three servers and two agents all on `from`.
    fn cluster(from: &str) -> (Vec<NodeVersion<'static>>, Vec<NodeVersion<'static>>) {
        let from = v(from);
        (
            vec![("s1", from), ("s2", from), ("s3", from)],
            vec![("a1", from), ("a2", from)],
        )
    }

    #[test]
    fn parses_and_displays_round_trip() {
        let x = v("v1.36.4+k3s1");
        assert_eq!(x, Version::new(1, 36, 4, 1));
        assert_eq!(x.to_string(), "v1.36.4+k3s1");
        assert_eq!(v("1.35.10+k3s12").to_string(), "v1.35.10+k3s12");
        assert_eq!(v(" v1.36.0+k3s2\n"), Version::new(1, 36, 0, 2));
    }

    #[test]
    fn refuses_what_is_not_a_release_version() {
        for bad in [
            "",
            "v1.36.4",
            "v1.36+k3s1",
            "v1.36.4.1+k3s1",
            "v1.36.x+k3s1",
            "v1.36.4+rke2r1",
            "v1.36.4+k3s",
            "v1.36.4-rc1+k3s1",
            "v1.-36.4+k3s1",
            "v1.99999999999.4+k3s1",
        ] {
            let e = bad.parse::<Version>().err();
            let Some(e) = e else {
                panic!("{bad:?} parsed");
            };
            assert!(
                e.to_string().contains("is not a k3s release version"),
                "{e}"
            );
            assert_eq!(e.input, bad);
        }
    }

    #[test]
    fn orders_by_minor_then_patch_then_revision() {
        assert!(v("v1.36.0+k3s1") > v("v1.35.9+k3s3"));
        assert!(v("v1.36.10+k3s1") > v("v1.36.9+k3s1"));
        assert!(v("v1.36.4+k3s2") > v("v1.36.4+k3s1"));
        assert!(v("v2.0.0+k3s1") > v("v1.99.0+k3s1"));
    }

    #[test]
    fn same_version_everywhere_is_nothing_to_do() {
        let (s, a) = cluster("v1.36.4+k3s1");
        assert_eq!(check_hop(&s, &a, &v("v1.36.4+k3s1")), HopCheck::UpToDate);
        assert_eq!(check_hop(&s, &[], &v("v1.36.4+k3s1")), HopCheck::UpToDate);
    }

    #[test]
    fn patch_only_upgrade_is_allowed() {
        let (s, a) = cluster("v1.36.2+k3s1");
        assert_eq!(check_hop(&s, &a, &v("v1.36.4+k3s1")), HopCheck::Allowed);
    }

    #[test]
    fn k3s_revision_bump_is_allowed() {
        let (s, a) = cluster("v1.36.4+k3s1");
        assert_eq!(check_hop(&s, &a, &v("v1.36.4+k3s2")), HopCheck::Allowed);
    }

    #[test]
    fn one_minor_upgrade_is_allowed() {
        let (s, a) = cluster("v1.35.9+k3s1");
        assert_eq!(check_hop(&s, &a, &v("v1.36.0+k3s1")), HopCheck::Allowed);
    }

    #[test]
    fn two_minors_are_refused_with_the_intermediate_release_as_hint() {
        let (s, a) = cluster("v1.34.5+k3s1");
        let r = refusals(check_hop(&s, &a, &v("v1.36.4+k3s1")));
        assert_eq!(r.len(), 5, "{r:?}");
        assert!(r.iter().all(|r| matches!(r, Refusal::MinorJump { .. })));
        assert_eq!(
            r[0].to_string(),
            "s1 runs v1.34.5+k3s1: the target v1.36.4+k3s1 is 2 minor versions ahead, and k3s must be upgraded one minor at a time"
        );
        let hint = r[0].hint().unwrap_or_default();
        assert!(
            hint.contains("upgrade to v1.35.x first with that release's installer"),
            "{hint}"
        );
    }

    #[test]
    fn a_major_change_is_refused() {
        let (s, a) = cluster("v1.36.4+k3s1");
        let r = refusals(check_hop(&s, &a, &v("v2.0.0+k3s1")));
        assert!(
            r.iter().all(|r| matches!(r, Refusal::MinorJump { .. })),
            "{r:?}"
        );
        assert!(
            r[0].hint()
                .unwrap_or_default()
                .contains("no supported upgrade"),
            "{r:?}"
        );
    }

    #[test]
    fn downgrade_is_refused() {
        let (s, a) = cluster("v1.36.4+k3s1");
        let r = refusals(check_hop(&s, &a, &v("v1.35.9+k3s1")));
        assert_eq!(r.len(), 5);
        assert!(r.iter().all(|r| matches!(r, Refusal::Downgrade { .. })));
    }

    #[test]
    fn downgrade_of_only_the_k3s_revision_is_refused() {
        let (s, a) = cluster("v1.36.4+k3s2");
        let r = refusals(check_hop(&s, &a, &v("v1.36.4+k3s1")));
        assert_eq!(
            r[0],
            Refusal::Downgrade {
                node: "s1".into(),
                running: v("v1.36.4+k3s2"),
                target: v("v1.36.4+k3s1"),
            }
        );
    }

    #[test]
    fn one_node_newer_than_the_target_is_a_downgrade_named_for_it() {
        let (mut s, a) = cluster("v1.36.2+k3s1");
        s[1].1 = v("v1.36.5+k3s1");
        let r = refusals(check_hop(&s, &a, &v("v1.36.4+k3s1")));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            r[0].to_string(),
            "downgrade refused: s2 runs v1.36.5+k3s1, newer than the target v1.36.4+k3s1"
        );
    }

    #[test]
    fn source_below_the_hop_minimum_is_refused() {
        let (s, a) = cluster("v1.33.7+k3s1");
        let r = refusals(check_hop(&s, &a, &v("v1.34.3+k3s1")));
        // Servers only: the rule is etcd's, and agents run no etcd.
        assert_eq!(r.len(), 3, "{r:?}");
        let Refusal::BelowHopMinimum { node, minimum, .. } = &r[0] else {
            panic!("{r:?}");
        };
        assert_eq!(node, "s1");
        assert_eq!(*minimum, v("v1.33.8+k3s1"));
        let msg = r[0].to_string();
        assert!(
            msg.contains("v1.33.7+k3s1") && msg.contains("v1.34.3+k3s1"),
            "{msg}"
        );
        assert!(msg.contains("etcd 3.5.26"), "{msg}");
        let hint = r[0].hint().unwrap_or_default();
        assert!(
            hint.contains("upgrade to v1.33.8+k3s1 or a later v1.33 release first"),
            "{hint}"
        );
    }

    #[test]
    fn source_at_the_hop_minimum_is_allowed() {
        let (s, a) = cluster("v1.33.8+k3s1");
        assert_eq!(check_hop(&s, &a, &v("v1.34.3+k3s1")), HopCheck::Allowed);
        // A patch upgrade within 1.33 below the minimum is how to get there.
        let (s, a) = cluster("v1.33.7+k3s1");
        assert_eq!(check_hop(&s, &a, &v("v1.33.8+k3s1")), HopCheck::Allowed);
    }

    #[test]
    fn agent_one_minor_older_while_servers_are_on_target_is_fine() {
        // The state a server phase leaves: a kubelet may be older than the apiservers.
        let t = v("v1.36.4+k3s1");
        let s = [("s1", t), ("s2", t), ("s3", t)];
        let a = [("a1", t), ("a2", v("v1.35.9+k3s1"))];
        assert_eq!(check_hop(&s, &a, &t), HopCheck::Allowed);
    }

    #[test]
    fn agent_on_a_newer_minor_than_a_server_is_refused() {
        let (s, mut a) = cluster("v1.35.9+k3s1");
        a[1].1 = v("v1.36.4+k3s1");
        let r = refusals(check_hop(&s, &a, &v("v1.36.4+k3s1")));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            r[0].to_string(),
            "agent a2 runs v1.36.4+k3s1, a newer minor than server s1 (v1.35.9+k3s1): a kubelet must never be newer than an apiserver"
        );
        assert!(
            r[0].hint()
                .unwrap_or_default()
                .contains("bring every server to v1.36")
        );
    }

    #[test]
    fn agent_on_a_newer_patch_of_the_same_minor_is_not_skew() {
        let (s, mut a) = cluster("v1.36.2+k3s1");
        a[0].1 = v("v1.36.3+k3s1");
        assert_eq!(check_hop(&s, &a, &v("v1.36.4+k3s1")), HopCheck::Allowed);
    }

    #[test]
    fn servers_one_minor_apart_mid_roll_are_allowed() {
        let (mut s, a) = cluster("v1.35.9+k3s1");
        s[0].1 = v("v1.36.4+k3s1");
        assert_eq!(check_hop(&s, &a, &v("v1.36.4+k3s1")), HopCheck::Allowed);
    }

    #[test]
    fn servers_two_minors_apart_are_refused() {
        let (mut s, a) = cluster("v1.35.9+k3s1");
        s[0].1 = v("v1.36.4+k3s1");
        s[2].1 = v("v1.34.6+k3s1");
        let r = refusals(check_hop(&s, &a, &v("v1.36.4+k3s1")));
        assert!(
            r.contains(&Refusal::ServersTooFarApart {
                oldest: "s3".into(),
                oldest_version: v("v1.34.6+k3s1"),
                newest: "s1".into(),
                newest_version: v("v1.36.4+k3s1"),
            }),
            "{r:?}"
        );
        // And s3's own hop is two minors.
        assert!(
            r.iter()
                .any(|r| matches!(r, Refusal::MinorJump { node, .. } if node == "s3"))
        );
    }

    #[test]
    fn no_servers_is_refused() {
        let t = v("v1.36.4+k3s1");
        assert_eq!(
            check_hop(&[], &[("a1", t)], &t),
            HopCheck::Refused(vec![Refusal::NoServers])
        );
    }

    #[test]
    fn every_refusal_names_its_nodes_and_versions_and_has_a_hint() {
        let target = v("v1.36.4+k3s1");
        let cases = [
            Refusal::Downgrade {
                node: "node-7".into(),
                running: v("v1.36.5+k3s1"),
                target,
            },
            Refusal::MinorJump {
                node: "node-7".into(),
                running: v("v1.34.1+k3s1"),
                target,
            },
            Refusal::BelowHopMinimum {
                node: "node-7".into(),
                running: v("v1.33.2+k3s1"),
                target: v("v1.34.3+k3s1"),
                minimum: v("v1.33.8+k3s1"),
                reason: "why",
            },
            Refusal::AgentNewerThanServer {
                agent: "node-7".into(),
                agent_version: target,
                server: "node-8".into(),
                server_version: v("v1.35.1+k3s1"),
            },
            Refusal::ServersTooFarApart {
                oldest: "node-7".into(),
                oldest_version: v("v1.34.1+k3s1"),
                newest: "node-8".into(),
                newest_version: target,
            },
        ];
        for r in &cases {
            let msg = r.to_string();
            assert!(msg.contains("node-7"), "{msg}");
            let versions: Vec<Version> = match r {
                Refusal::Downgrade {
                    running, target, ..
                }
                | Refusal::MinorJump {
                    running, target, ..
                }
                | Refusal::BelowHopMinimum {
                    running, target, ..
                } => vec![*running, *target],
                Refusal::AgentNewerThanServer {
                    agent_version,
                    server_version,
                    ..
                } => vec![*agent_version, *server_version],
                Refusal::ServersTooFarApart {
                    oldest_version,
                    newest_version,
                    ..
                } => vec![*oldest_version, *newest_version],
                Refusal::NoServers => unreachable!(),
            };
            for v in versions {
                assert!(msg.contains(&v.to_string()), "{msg} lacks {v}");
            }
            // Through the project's trait, as phases will see it.
            let hint = Hint::hint(r).unwrap_or_default();
            assert!(!hint.is_empty(), "{msg}: no hint");
        }
    }
}
