//! Prompts on the terminal (dialoguer), wrapped so they never fight the progress bars: each
//! prompt runs with the terminal renderer's bars suspended. Used by the wizard and to ask
//! for passwords an answer file leaves out. A Ctrl-C at a prompt becomes
//! [`std::io::ErrorKind::Interrupted`], which the caller turns into exit code 130.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a renderer: presenting to the terminal is its job"
)]

use super::terminal::TerminalRenderer;
use crate::config::validate::Prompter;
use crate::secret::Secret;
use dialoguer::theme::ColorfulTheme;
use std::io::IsTerminal;
use std::sync::Arc;

/// Asks questions on the terminal (stderr), with the bars out of the way.
#[derive(Clone, Default)]
pub struct Prompts {
    terminal: Option<Arc<TerminalRenderer>>,
}

impl std::fmt::Debug for Prompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prompts")
    }
}

/// Whether there is a person to ask: stdin and stderr are both terminals.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn io(e: dialoguer::Error) -> std::io::Error {
    e.into()
}

impl Prompts {
    /// Prompts that suspend `terminal`'s bars while asking.
    pub fn new(terminal: Option<Arc<TerminalRenderer>>) -> Prompts {
        Prompts { terminal }
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let r = match &self.terminal {
            Some(t) => t.suspend(f),
            None => f(),
        };
        // dialoguer hides the cursor while reading keys; make sure it comes back even
        // after Ctrl-C.
        let _ = console::Term::stderr().show_cursor();
        r
    }

    /// A line of text, checked by `check` as it is entered (the prompt repeats with the
    /// problem shown until the answer passes).
    pub fn input(
        &self,
        prompt: &str,
        default: Option<&str>,
        mut check: impl FnMut(&str) -> Result<(), String>,
    ) -> std::io::Result<String> {
        self.run(|| {
            let theme = ColorfulTheme::default();
            let mut i = dialoguer::Input::<String>::with_theme(&theme)
                .with_prompt(prompt)
                .validate_with(|s: &String| check(s.trim()));
            if let Some(d) = default {
                i = i.default(d.to_owned());
            }
            i.interact_text().map(|s| s.trim().to_owned()).map_err(io)
        })
    }

    /// A hidden answer (never echoed), asked twice when `confirm` is set.
    pub fn password(&self, prompt: &str, confirm: bool) -> std::io::Result<Secret> {
        self.run(|| {
            let theme = ColorfulTheme::default();
            let mut p = dialoguer::Password::with_theme(&theme).with_prompt(prompt);
            if confirm {
                p = p.with_confirmation("Again", "The two entries differ; try again");
            }
            p.interact().map(Secret::new).map_err(io)
        })
    }

    /// Yes or no.
    pub fn confirm(&self, prompt: &str, default: bool) -> std::io::Result<bool> {
        self.run(|| {
            let theme = ColorfulTheme::default();
            dialoguer::Confirm::with_theme(&theme)
                .with_prompt(prompt)
                .default(default)
                .interact()
                .map_err(io)
        })
    }

    /// One of `items` (arrow keys and Enter); returns its index.
    pub fn select(&self, prompt: &str, items: &[&str], default: usize) -> std::io::Result<usize> {
        self.run(|| {
            let theme = ColorfulTheme::default();
            dialoguer::Select::with_theme(&theme)
                .with_prompt(prompt)
                .items(items)
                .default(default)
                .interact()
                .map_err(io)
        })
    }

    /// Prints a line on stderr with the bars suspended.
    pub fn say(&self, text: &str) {
        self.run(|| eprintln!("{text}"));
    }
}

impl Prompter for Prompts {
    fn secret(&self, what: &str) -> Option<Secret> {
        if !interactive() {
            return None;
        }
        let mut prompt = what.to_owned();
        if let Some(first) = prompt.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        self.password(&prompt, false).ok()
    }
}

impl crate::config::wizard::Ask for Prompts {
    fn input(
        &self,
        prompt: &str,
        default: Option<&str>,
        check: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> std::io::Result<String> {
        Prompts::input(self, prompt, default, check)
    }

    fn secret(&self, prompt: &str, optional: bool) -> std::io::Result<Secret> {
        self.run(|| {
            let theme = ColorfulTheme::default();
            dialoguer::Password::with_theme(&theme)
                .with_prompt(prompt)
                .allow_empty_password(optional)
                .interact()
                .map(Secret::new)
                .map_err(io)
        })
    }

    fn confirm(&self, prompt: &str, default: bool) -> std::io::Result<bool> {
        Prompts::confirm(self, prompt, default)
    }

    fn select(&self, prompt: &str, items: &[&str], default: usize) -> std::io::Result<usize> {
        Prompts::select(self, prompt, items, default)
    }

    fn show_plan(&self, plan: &crate::config::plan::PlanSummary) {
        self.say(&format!("\n{}", super::text::plan(plan)));
    }

    fn say(&self, text: &str) {
        Prompts::say(self, text)
    }
}
