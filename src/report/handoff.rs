//! The install's last screen: where the appliance is, how to log in, what the CA file is
//! for, what to keep, what to run next. Plain data built by `commands::install` from the
//! application's own `handoff` metadata; the generated password travels beside it and is
//! shown only on a terminal, never serialized (so never in the log or JSON output).

use serde::Serialize;

use crate::secret::Secret;

/// Everything the hand-off screen says.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Handoff {
    pub title: String,
    /// `https://<dnsName>:port/path`, when the application names its DNS name.
    pub url: Option<String>,
    /// The DNS name to create, pointing at the nodes.
    pub dns_name: Option<String>,
    /// The same URL on each node's address, usable before the DNS record exists.
    pub node_urls: Vec<String>,
    pub user: Option<String>,
    /// Generated in this run: shown once, on the terminal only.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Where the password comes from when it is not shown (the answer file's value, or the
    /// command that prints it).
    pub password_note: Option<String>,
    pub ca_file: Option<String>,
    pub kubeconfig: Option<String>,
    pub answer_file: Option<String>,
    pub state_dir: Option<String>,
    /// Commands to run next.
    pub next: Vec<String>,
}

/// The screen as text. `show_password` only where a person is watching a terminal.
pub fn render(h: &Handoff, show_password: bool) -> String {
    let mut out = vec![h.title.clone(), String::new()];
    let mut row = |label: &str, text: String| out.push(format!("  {label:<9}{text}"));
    match (&h.url, h.node_urls.first()) {
        (Some(url), first) => {
            row("Open", url.clone());
            if let Some(dns) = &h.dns_name {
                row(
                    "",
                    format!(
                        "(create a DNS record for {dns} pointing at the nodes; until then use {})",
                        first.cloned().unwrap_or_default()
                    ),
                );
            }
        }
        (None, Some(first)) => row("Open", first.clone()),
        (None, None) => {}
    }
    if h.node_urls.len() > 1 {
        row("On", h.node_urls.join("  "));
    }
    if let Some(user) = &h.user {
        row("Log in", format!("as {user}"));
        match (&h.password, show_password) {
            (Some(p), true) => {
                row("Password", p.expose().to_owned());
                row(
                    "",
                    "(generated now and shown only this once: keep it somewhere safe)".into(),
                );
                if let Some(n) = &h.password_note {
                    row("", format!("later: {n}"));
                }
            }
            _ => {
                if let Some(n) = &h.password_note {
                    row("Password", n.clone());
                }
            }
        }
    }
    if let Some(ca) = &h.ca_file {
        row(
            "Trust",
            format!(
                "{ca}: the appliance's own CA, which issued its certificate; import it into your browser's or system's trust store"
            ),
        );
    }
    let mut keep = Vec::new();
    if let Some(a) = &h.answer_file {
        keep.push(format!("{a} (reruns, upgrades)"));
    }
    if let Some(k) = &h.kubeconfig {
        keep.push(format!("{k} (cluster-admin access)"));
    }
    if !keep.is_empty() {
        row("Keep", keep.join(" and "));
    }
    if let Some(s) = &h.state_dir {
        row("State", s.clone());
    }
    for (i, n) in h.next.iter().enumerate() {
        row(if i == 0 { "Next" } else { "" }, n.clone());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handoff {
        Handoff {
            title: "The appliance is ready".into(),
            url: Some("https://appliance.example.internal:8443/admin/".into()),
            dns_name: Some("appliance.example.internal".into()),
            node_urls: vec![
                "https://10.0.0.11:8443/admin/".into(),
                "https://10.0.0.12:8443/admin/".into(),
            ],
            user: Some("admin".into()),
            password: Some(Secret::new("Zq7-generated-once".to_string())),
            password_note: Some("kubectl --kubeconfig ./appliance-kubeconfig.yaml -n appliance get secret app-secrets -o jsonpath='{.data.admin-password}' | base64 -d".into()),
            ca_file: Some("./appliance-ca.crt".into()),
            kubeconfig: Some("./appliance-kubeconfig.yaml".into()),
            answer_file: Some("./answers.yaml".into()),
            state_dir: Some("./.installer/appliance".into()),
            next: vec!["installer status -f ./answers.yaml".into()],
        }
    }

    #[test]
    fn the_screen_says_where_how_and_what_next() {
        insta::assert_snapshot!(render(&sample(), true));
    }

    #[test]
    fn the_password_is_shown_only_on_a_terminal_and_never_serialized() {
        let h = sample();
        assert!(render(&h, true).contains("Zq7-generated-once"));
        let plain = render(&h, false);
        assert!(!plain.contains("Zq7-generated-once"), "{plain}");
        assert!(plain.contains("base64 -d"), "{plain}");
        let json = serde_json::to_string(&h).unwrap();
        assert!(!json.contains("Zq7-generated-once"), "{json}");
        assert!(json.contains("\"user\":\"admin\""), "{json}");
    }
}
