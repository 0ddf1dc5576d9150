//! The last outcome of each job, `<backup.state_dir>/notify-state.json`, so that a
//! "recovery" (the first success after one or more failures of the same job) is seen
//! across processes: a failed scheduled backup and the on-demand backup that follows
//! it, or two CLI runs. Written atomically (temp file, fsync, rename) under the
//! `notify-state` lock; the daemon and the CLI share it. Losing it only costs one
//! recovery notification, so errors are reported to the caller, never fatal.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const FILE: &str = "notify-state.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Last {
    pub ok: bool,
    /// Failures in a row (0 after a success).
    pub failures: u32,
    pub at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    jobs: BTreeMap<String, Last>,
}

/// Record that the jobs `keys` (usually one: `physical`, `verify`, `restore` …) ended
/// with `ok`, and return how many failures in a row came before (the most among `keys`):
/// a success with a non-zero answer is a recovery.
pub fn record(state_dir: &Path, keys: &[&str], ok: bool) -> anyhow::Result<u32> {
    let _lock = crate::lock::acquire(
        state_dir,
        "notify-state",
        crate::lock::Wait::Up(std::time::Duration::from_secs(10)),
    )?;
    let p = state_dir.join(FILE);
    let mut st: State = match std::fs::read(&p) {
        // A damaged file is replaced: it only remembers outcomes.
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(e).with_context(|| format!("read {}", p.display())),
    };
    let mut before = 0;
    for k in keys {
        let last = st.jobs.entry(k.to_string()).or_default();
        before = before.max(last.failures);
        last.failures = if ok { 0 } else { last.failures + 1 };
        last.ok = ok;
        last.at = Some(Utc::now());
    }
    crate::jobs::history::write_json_atomically(state_dir, &p, &st)?;
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_per_job() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        assert_eq!(record(s, &["physical"], true).unwrap(), 0);
        assert_eq!(record(s, &["physical"], false).unwrap(), 0);
        assert_eq!(record(s, &["logical"], true).unwrap(), 0);
        assert_eq!(record(s, &["physical"], false).unwrap(), 1);
        // The first success after two failures.
        assert_eq!(record(s, &["physical"], true).unwrap(), 2);
        assert_eq!(record(s, &["physical"], true).unwrap(), 0);
        // Both kinds at once: a recovery if either had failed.
        record(s, &["logical"], false).unwrap();
        assert_eq!(record(s, &["physical", "logical"], true).unwrap(), 1);
        // A damaged file is replaced.
        std::fs::write(s.join(FILE), "{").unwrap();
        assert_eq!(record(s, &["physical"], false).unwrap(), 0);
    }
}
