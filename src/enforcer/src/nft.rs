//! The applier: one table of the enforcer's own, replaced in one `nft -f` transaction.
//!
//! The batch is `table inet T {}` (so the delete cannot fail), `delete table inet T`, then the
//! new table: nft commits it as one netlink transaction, so a batch the kernel refuses (a
//! cgroup path that vanished, a syntax error) leaves the previous table exactly as it was.
//! Nothing is flushed on exit: killed or crashed, the rules stay (fail-closed).

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `nft`, optionally inside another network namespace (`nsenter --net=<path> nft`).
#[derive(Debug, Clone)]
pub struct Nft {
    /// Words before `nft` (empty: run nft directly).
    pub prefix: Vec<String>,
    pub table: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("could not run nft ({0}); hint: the enforcer needs the nft binary and CAP_NET_ADMIN")]
    Spawn(std::io::Error),
    #[error("nft refused the batch (the previous rules stay in place): {0}")]
    Refused(String),
    #[error("unexpected nft output: {0}")]
    Output(String),
}

/// The table's named counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub dropped_packets: u64,
    pub would_drop_packets: u64,
}

impl Nft {
    pub fn new(table: &str, netns: Option<&str>) -> Self {
        let prefix = netns
            .map(|p| vec!["nsenter".to_string(), format!("--net={p}")])
            .unwrap_or_default();
        Nft {
            prefix,
            table: table.to_string(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = if let Some((first, rest)) = self.prefix.split_first() {
            let mut c = Command::new(first);
            c.args(rest).arg("nft");
            c
        } else {
            Command::new("nft")
        };
        c.args(args);
        c
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(NftError::Spawn)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(NftError::Spawn)?;
        }
        let out = child.wait_with_output().map_err(NftError::Spawn)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NftError::Refused(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }

    /// The batch that replaces the table with `table_text` atomically.
    pub fn batch(&self, table_text: &str) -> String {
        format!(
            "table inet {t} {{ }}\ndelete table inet {t}\n{table_text}",
            t = self.table
        )
    }

    /// Replaces the table in one transaction.
    pub fn apply(&self, table_text: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(&self.batch(table_text)))
            .map(|_| ())
    }

    /// Checks a batch without committing it.
    pub fn check(&self, table_text: &str) -> Result<(), NftError> {
        self.run(&["-c", "-f", "-"], Some(&self.batch(table_text)))
            .map(|_| ())
    }

    /// The table as the kernel holds it, without counter values; `None` when it does not exist.
    pub fn listing(&self) -> Result<Option<String>, NftError> {
        match self.run(&["-s", "list", "table", "inet", &self.table], None) {
            Ok(s) => Ok(Some(s)),
            Err(NftError::Refused(e)) if e.contains("No such file") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the table (only `enforcer uninstall` and tests do this).
    pub fn delete(&self) -> Result<(), NftError> {
        self.run(
            &["-f", "-"],
            Some(&format!(
                "table inet {t} {{ }}\ndelete table inet {t}\n",
                t = self.table
            )),
        )
        .map(|_| ())
    }

    /// The named counters' packet counts (zero when the table does not exist).
    pub fn counters(&self) -> Result<Counters, NftError> {
        let out = match self.run(
            &["-j", "list", "counters", "table", "inet", &self.table],
            None,
        ) {
            Ok(o) => o,
            Err(NftError::Refused(e)) if e.contains("No such file") => {
                return Ok(Counters::default());
            }
            Err(e) => return Err(e),
        };
        parse_counters(&out)
    }
}

/// Reads `nft -j list counters` output.
pub fn parse_counters(json: &str) -> Result<Counters, NftError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| NftError::Output(e.to_string()))?;
    let mut c = Counters::default();
    for item in v
        .get("nftables")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
    {
        let Some(ctr) = item.get("counter") else {
            continue;
        };
        let packets = ctr.get("packets").and_then(|p| p.as_u64()).unwrap_or(0);
        match ctr.get("name").and_then(|n| n.as_str()) {
            Some("dropped") => c.dropped_packets = packets,
            Some("would_drop") => c.would_drop_packets = packets,
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_nft_json() {
        let j = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "dropped", "table": "t", "handle": 1, "packets": 7, "bytes": 420}}, {"counter": {"family": "inet", "name": "would_drop", "table": "t", "handle": 2, "packets": 3, "bytes": 1}}]}"#;
        assert_eq!(
            parse_counters(j).unwrap(),
            Counters {
                dropped_packets: 7,
                would_drop_packets: 3
            }
        );
    }

    #[test]
    fn batch_replaces_the_table_in_one_transaction() {
        let n = Nft::new("enf", Some("/run/netns/x"));
        let b = n.batch("table inet enf {\n}\n");
        assert!(
            b.starts_with("table inet enf { }\ndelete table inet enf\ntable inet enf {"),
            "{b}"
        );
        let c = n.command(&["-f", "-"]);
        assert_eq!(c.get_program(), "nsenter");
    }
}
