//! `cluster`: every node Ready; the admin kubeconfig rewritten for the workstation and
//! written beside the answer file (0600).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::PipelineError;
use super::context::ConnectedHost;
use super::ids::PhaseId;
use super::k3s_node::{Booted, K3sPlan};
use super::runner::{Runner, StepError, StepOk};
use crate::k3s::config::server_url;
use crate::kube::wait;

/// The problems that keep the expected nodes from being Ready (empty when all are).
pub fn not_ready(nodes: &[k8s_openapi::api::core::v1::Node], expected: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in expected {
        match nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
        {
            Some(n) => {
                let (ready, why) = wait::node_readiness(n);
                if !ready {
                    problems.push(format!("{name}: {why}"));
                }
            }
            None => problems.push(format!("{name}: not registered")),
        }
    }
    problems
}

/// The `cluster` gate. Returns where the kubeconfig was written.
pub async fn run(
    runner: &mut Runner,
    plan: &K3sPlan<'_>,
    boot: &Booted,
    hosts: &[Arc<ConnectedHost>],
    kubeconfig_out: &Path,
) -> Result<PathBuf, PipelineError> {
    let first = plan.first.clone();
    let expected: Vec<String> = hosts.iter().map(|n| n.node_name.clone()).collect();
    let path = kubeconfig_out.to_owned();
    let id = PhaseId::Cluster;
    runner
        .cluster_step(id.id(), id.title(), async {
            let nodes = boot.cluster.nodes().await?;
            let problems = not_ready(&nodes, &expected);
            if !problems.is_empty() {
                return Err(StepError::new(format!(
                    "not every node is Ready: {}",
                    problems.join("; ")
                )));
            }
            let k3s_yaml = super::k3s_node::read_kubeconfig(first.remote.as_ref()).await?;
            let rewritten = crate::k3s::kubeconfig::rewrite_kubeconfig(
                k3s_yaml.expose(),
                &server_url(&first.spec.address),
                &plan.ctx.cluster_name,
            )?;
            let same = crate::fsx::own_regular_file(&path).ok().flatten() == Some(true)
                && std::fs::read(&path).is_ok_and(|b| b == rewritten.expose().as_bytes());
            let detail = format!(
                "{} nodes Ready; kubeconfig {}",
                expected.len(),
                path.display()
            );
            if same {
                return Ok((StepOk::unchanged(detail), ()));
            }
            write_private_file(&path, rewritten.expose().as_bytes())
                .map_err(|e| StepError::new(e.to_string()))?;
            Ok((StepOk::changed(detail), ()))
        })
        .await?;
    Ok(path)
}

/// Writes a file readable only by the owner (0600), atomically and safely ([`crate::fsx`]).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::fsx::write_atomic(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/kubeconfig");
        write_private_file(&p, b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
