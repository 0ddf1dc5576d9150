//! A cluster archiving into a test repository with `backupctl wal-push`, the config that
//! reaches both, and `both_backends!` to run a test function against each backend.

use std::path::PathBuf;
use std::process::Output;

use super::{
    archive_command, backupctl, check_output, free_port, pg_tempdir, stdout, switch_wal_and_wait,
    Backend, Cluster, ClusterOptions, Restored, TestRepo,
};

/// `[retention]` keeping the newest physical backup and the WAL it needs.
pub const KEEP_LAST_1: &str =
    "[retention]\nwal = \"backups\"\n\n[retention.physical]\nkeep_last = 1\n";

/// A cluster archiving into a test repository, and the config that reaches both.
pub struct Setup {
    pub t: TestRepo,
    pub cluster: Cluster,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(backend: Backend) -> Setup {
        Self::with(backend, ClusterOptions::default(), "")
    }

    /// With `extra` config sections after `[postgres]`.
    pub fn with_config(backend: Backend, extra: &str) -> Setup {
        Self::with(backend, ClusterOptions::default(), extra)
    }

    /// With cluster options of its own (`archive_command` is set here) and `extra`
    /// config sections after `[postgres]`.
    pub fn with(backend: Backend, mut opts: ClusterOptions, extra: &str) -> Setup {
        let t = TestRepo::new(backend);
        let config = t.write_config("backup.toml", "");
        opts.archive_command = Some(archive_command(&config));
        let cluster = Cluster::new(opts);
        let config = t.write_config(
            "backup.toml",
            &format!("{}\n{extra}", cluster.postgres_toml()),
        );
        Setup { t, cluster, config }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        backupctl(&self.config, args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        check_output(&format!("backupctl {args:?}"), out.clone());
        stdout(&out)
    }

    /// A physical backup without verification, its WAL archived; returns its id.
    pub fn backup_no_verify(&self) -> String {
        let id = self
            .ok(&["backup", "--kind", "physical", "--no-verify"])
            .trim()
            .to_string();
        switch_wal_and_wait(&self.cluster);
        id
    }

    /// A physical backup (verified as configured); returns its id.
    pub fn backup(&self) -> String {
        self.ok(&["backup", "--kind", "physical"])
            .trim()
            .to_string()
    }

    pub fn sql(&self, sql: &str) -> String {
        self.cluster.psql("postgres", sql)
    }

    /// Server time, as a restore target.
    pub fn now(&self) -> String {
        self.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
    }

    /// Restore with `--start` into a fresh directory; returns the running server.
    pub fn restore_start(&self, extra: &[&str]) -> Restored {
        let dir = pg_tempdir();
        let pgdata = dir.path().join("restored");
        let port = free_port();
        let port_s = port.to_string();
        let pg = pgdata.display().to_string();
        let mut args = vec!["restore", "--pgdata", &pg, "--start", "--port", &port_s];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let restored = Restored {
            pgdata: pgdata.clone(),
            socket_dir: self.cluster.socket_dir.clone(),
            port,
            dir: Some(dir),
        };
        check_output(&format!("restore {extra:?}"), out);
        restored
    }

    /// Path of a stored object's bytes on disk (local repository or s3s-fs's files).
    pub fn object_path(&self, key: &str) -> PathBuf {
        match &self.t.s3 {
            None => self.t.dir.path().join("repo/main").join(key),
            Some(s3) => s3.bucket_dir().join("pg/main").join(key),
        }
    }
}

/// `both_backends!(f, g)`: tests `local::f`, `s3::f`, … calling `f(Backend::Local)` and
/// `f(Backend::S3)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $name() { super::$name($crate::common::Backend::Local) })*
        }
        mod s3 {
            $(#[test] fn $name() { super::$name($crate::common::Backend::S3) })*
        }
    };
}
