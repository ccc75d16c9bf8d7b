//! Named crash points for tests: `PGPIPE_FAILPOINTS="step.a=abort;step.b=sleep(500)"`.
//!
//! `abort` ends the process at once, like SIGKILL (no destructors, no
//! flush), so tests can prove that every step resumes from the log.
//! `sleep(ms)` delays the step (e.g. to observe a state that is normally
//! too short to see). Unset in production: one environment lookup, cached.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Abort,
    Sleep(Duration),
}

fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(';')
        .filter_map(|item| {
            let (name, action) = item.trim().split_once('=')?;
            let action = action.trim();
            let action = if action == "abort" {
                Action::Abort
            } else {
                let ms = action.strip_prefix("sleep(")?.strip_suffix(')')?;
                Action::Sleep(Duration::from_millis(ms.trim().parse().ok()?))
            };
            Some((name.trim().to_owned(), action))
        })
        .collect()
}

fn points() -> &'static HashMap<String, Action> {
    static POINTS: OnceLock<HashMap<String, Action>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("PGPIPE_FAILPOINTS")
            .map(|s| parse(&s))
            .unwrap_or_default()
    })
}

/// Runs the action configured for `name`, if any.
pub async fn hit(name: &str) {
    match points().get(name) {
        None => {}
        Some(Action::Abort) => {
            tracing::warn!(failpoint = name, "failpoint: aborting the process");
            std::process::abort();
        }
        Some(Action::Sleep(d)) => {
            tracing::warn!(
                failpoint = name,
                ms = d.as_millis() as u64,
                "failpoint: sleeping"
            );
            tokio::time::sleep(*d).await;
        }
    }
}

/// Blocking variant for code outside the runtime.
pub fn hit_blocking(name: &str) {
    match points().get(name) {
        None => {}
        Some(Action::Abort) => std::process::abort(),
        Some(Action::Sleep(d)) => std::thread::sleep(*d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_abort_and_sleep_and_ignores_garbage() {
        let p = parse("a=abort; b=sleep(250);c=explode;=;d");
        assert_eq!(p.get("a"), Some(&Action::Abort));
        assert_eq!(p.get("b"), Some(&Action::Sleep(Duration::from_millis(250))));
        assert_eq!(p.len(), 2);
    }
}
