//! The systemd units `k3s.service` (servers) and `k3s-agent.service` (agents), exactly as
//! k3s's install.sh `create_systemd_service_file` writes them (k3s-host-network.md §3):
//! `Type=notify`, `KillMode=process` (restarting k3s leaves pods running), `Delegate=yes`,
//! unlimited tasks and files, `Restart=always`. k3s itself reads config.yaml, so the unit
//! carries no flags and no secrets.

use serde::Serialize;

use super::flags::K3sCommand;
use super::{K3sError, RenderedFile, paths};

/// The unit name for a k3s subcommand.
pub fn unit_name(cmd: K3sCommand) -> &'static str {
    match cmd {
        K3sCommand::Server => paths::SERVER_UNIT,
        K3sCommand::Agent => paths::AGENT_UNIT,
    }
}

#[derive(Serialize)]
struct UnitContext {
    unit_path: String,
    env_file: String,
    binary: &'static str,
    command: &'static str,
}

/// Renders the unit for `cmd` (mode 0644 in /etc/systemd/system).
pub fn render_unit(cmd: K3sCommand) -> Result<RenderedFile, K3sError> {
    let unit_path = paths::unit_path(unit_name(cmd));
    let ctx = UnitContext {
        // install.sh: FILE_K3S_ENV=${SYSTEMD_DIR}/${SERVICE_K3S}.env (optional, `-` prefix).
        env_file: format!("{unit_path}.env"),
        unit_path: unit_path.clone(),
        binary: paths::K3S_BINARY,
        command: cmd.as_str(),
    };
    Ok(RenderedFile {
        path: unit_path,
        mode: 0o644,
        content: super::render("k3s.service", &ctx)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn directives(unit: &str) -> Vec<(String, String)> {
        unit.lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn server_unit() {
        let f = render_unit(K3sCommand::Server).unwrap();
        assert_eq!(f.path, "/etc/systemd/system/k3s.service");
        assert_eq!(f.mode, 0o644);
        insta::assert_snapshot!(f.content);
    }

    #[test]
    fn agent_unit() {
        let f = render_unit(K3sCommand::Agent).unwrap();
        assert_eq!(f.path, "/etc/systemd/system/k3s-agent.service");
        insta::assert_snapshot!(f.content);
        assert!(
            f.content
                .contains("ExecStart=/usr/local/bin/k3s \\\n    agent\n")
        );
    }

    #[test]
    fn units_carry_the_settings_that_keep_pods_alive() {
        for cmd in [K3sCommand::Server, K3sCommand::Agent] {
            let d = directives(&render_unit(cmd).unwrap().content);
            for (k, v) in [
                ("Type", "notify"),
                ("KillMode", "process"),
                ("Delegate", "yes"),
                ("TimeoutStartSec", "0"),
                ("Restart", "always"),
                ("TasksMax", "infinity"),
                ("LimitNOFILE", "1048576"),
            ] {
                assert!(
                    d.contains(&(k.to_owned(), v.to_owned())),
                    "{cmd}: {k}={v} missing"
                );
            }
        }
    }
}
