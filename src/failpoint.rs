//! Named points in the code where the fault-injection suite (`tests/faults.rs`) stops or
//! breaks the binary: "after the first object", "before the manifest", "mid-transaction".
//! A test that kills a backup at a point it chose, instead of after a sleep, hits the
//! same state on every run.
//!
//! Built on the `fail` crate, compiled in only with the `failpoints` feature (which
//! `scripts/test` enables; release builds never do): without it [`point`] is an empty
//! inline function. With it, two environment variables drive the points:
//! - `FAILPOINTS` (the `fail` crate's own syntax, e.g. `backup.before-manifest=panic`);
//! - `BACKUPCTL_STOP_AT=NAME[@N][,…]`: when one of these points is reached (for the N-th
//!   time), the process prints `backupctl: stopped at failpoint NAME` on stderr and then
//!   waits forever, so that the test, having read that line, kills it with SIGKILL
//!   exactly there.
//!
//! Every point is listed in [`POINTS`] so that the tests and docs/reliability.md can
//! name them and a misspelt point is refused instead of never firing.

/// The points compiled into the code, each with where it is.
pub const POINTS: &[(&str, &str)] = &[
    (
        "backup.started",
        "a backup (physical or logical) has begun (pg_backup_start done, or the restore point \
         and snapshot taken) and stored nothing yet",
    ),
    (
        "repo.put.mid-object",
        "an object is partly stored: the local backend has written the first stretch of a \
         body longer than one stretch into its hidden temporary file (S3 objects appear \
         whole or not at all, so there is no such point there)",
    ),
    (
        "backup.before-manifest",
        "every object of a backup is stored; its manifest is not",
    ),
    (
        "backup.after-manifest",
        "the manifest is stored; the command has not reported or verified yet",
    ),
    (
        "wal-push.before-upload",
        "wal-push has read and checked the WAL file and stored nothing",
    ),
    (
        "wal-push.after-upload",
        "the WAL file is stored; wal-push has not exited",
    ),
    (
        "restore.mid-copy",
        "a restore has written the first of the backup's parts into the target directory",
    ),
    (
        "restore.before-recovery-config",
        "every part is in the target directory; recovery settings and signal file are not",
    ),
    (
        "export.before-manifest",
        "an export's object is stored and read back; its manifest is not written and no \
         row is dropped",
    ),
    (
        "export.after-manifest",
        "an export's manifest is stored; its rows are still in the database",
    ),
    (
        "archive.mid-transaction",
        "an archival batch has copied rows into the archive table and deleted them from the \
         source, inside its transaction, before the commit",
    ),
    (
        "retention.mid-delete",
        "retention has deleted a backup's manifest and not yet its data",
    ),
];

/// Pass through point `name` (one of [`POINTS`]).
#[inline]
pub fn point(name: &'static str) {
    debug_assert!(
        POINTS.iter().any(|(p, _)| *p == name),
        "failpoint {name} is not listed in POINTS"
    );
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name);
}

/// Arm the points the environment names; call once at start-up and keep the returned
/// guard alive. Without the `failpoints` feature there is nothing to arm.
#[cfg(feature = "failpoints")]
pub fn setup() -> anyhow::Result<fail::FailScenario<'static>> {
    let scenario = fail::FailScenario::setup();
    if let Ok(list) = std::env::var("BACKUPCTL_STOP_AT") {
        for item in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let (name, nth) = match item.split_once('@') {
                Some((name, n)) => match n.parse::<u64>() {
                    Ok(n) if n > 0 => (name, n),
                    _ => anyhow::bail!(
                        "BACKUPCTL_STOP_AT: {item:?}: after '@' comes how many times the point \
                         is passed before stopping, counted from 1"
                    ),
                },
                None => (item, 1),
            };
            let Some(&(name, _)) = POINTS.iter().find(|(p, _)| *p == name) else {
                anyhow::bail!(
                    "BACKUPCTL_STOP_AT names an unknown failpoint {name:?}; known: {}",
                    POINTS
                        .iter()
                        .map(|(p, _)| *p)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let passes = std::sync::atomic::AtomicU64::new(0);
            fail::cfg_callback(name, move || {
                if passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= nth {
                    stop_here(name)
                }
            })
            .map_err(|e| anyhow::anyhow!("arm failpoint {name}: {e}"))?;
        }
    }
    Ok(scenario)
}

/// Announce the point and wait to be killed. Only the first thread to arrive announces;
/// others that reach an armed point wait silently.
#[cfg(feature = "failpoints")]
fn stop_here(name: &str) {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOPPED: AtomicBool = AtomicBool::new(false);
    if !STOPPED.swap(true, Ordering::SeqCst) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "backupctl: stopped at failpoint {name}");
        let _ = err.flush();
    }
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_unique_and_described() {
        let mut names: Vec<&str> = POINTS.iter().map(|(p, _)| *p).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
        assert!(POINTS.iter().all(|(_, what)| !what.is_empty()));
    }
}
