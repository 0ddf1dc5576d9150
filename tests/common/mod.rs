//! Test harness: throwaway PostgreSQL 15 clusters, an `s3s-fs` S3 server, repositories
//! of both kinds, and a way to run the `backupctl` binary the way PostgreSQL and systemd
//! would (as the `postgres` user when the tests run as root).
//!
//! Everything is torn down on drop, so a failing test still stops its servers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backupctl::config::Config;
use backupctl::repo::Repository;
use tempfile::TempDir;

pub mod setup;
pub mod webhook;

// ---------------------------------------------------------------------------------------
// Users and paths

/// uid/gid of the `postgres` user when the tests run as root (PostgreSQL refuses root).
pub fn pg_user() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("run id");
            assert!(
                out.status.success(),
                "tests run as root need a `postgres` user (apt-get install postgresql-15 creates it)"
            );
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        Some((id("-u"), id("-g")))
    })
}

/// Give `path` (recursively) to the postgres user when running as root.
pub fn chown_to_pg(path: &Path) {
    if let Some((uid, gid)) = pg_user() {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", path.display());
    }
}

/// Run `cmd` as the postgres user (when root), from a directory that user can enter.
pub fn as_pg(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = pg_user() {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .current_dir("/tmp");
    }
    cmd
}

/// A temp dir the postgres user owns (when root).
pub fn pg_tempdir() -> TempDir {
    let d = tempfile::Builder::new()
        .prefix("backupctl-test-")
        .tempdir()
        .unwrap();
    chown_to_pg(d.path());
    d
}

/// The server programs the tests run (initdb, pg_ctl, postgres): `BACKUPCTL_TEST_PG_BIN`,
/// else Debian's PostgreSQL 15.
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("BACKUPCTL_TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The client programs (psql, pg_dump, pgbench, pg_waldump, …): `BACKUPCTL_TEST_PG_CLIENT_BIN`
/// when they live apart from the server programs (the version matrix runs PostgreSQL
/// 16 and 17 servers with PostgreSQL 18's client programs), else [`pg_bin_dir`].
pub fn pg_client_bin_dir() -> PathBuf {
    std::env::var_os("BACKUPCTL_TEST_PG_CLIENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(pg_bin_dir)
}

pub fn pg_bin(program: &str) -> PathBuf {
    if ["initdb", "pg_ctl", "postgres"].contains(&program) {
        pg_bin_dir().join(program)
    } else {
        pg_client_bin_dir().join(program)
    }
}

/// `bin_dir` (and `client_bin_dir` when apart) lines of `[postgres]`.
pub fn bin_toml() -> String {
    let mut s = format!("bin_dir = \"{}\"\n", pg_bin_dir().display());
    if pg_client_bin_dir() != pg_bin_dir() {
        s.push_str(&format!(
            "client_bin_dir = \"{}\"\n",
            pg_client_bin_dir().display()
        ));
    }
    s
}

/// The backupctl binary, at a path the postgres user can execute (the build directory
/// may be under a home directory postgres cannot enter).
pub fn backupctl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_backupctl"));
        if pg_user().is_none() {
            return built;
        }
        let md = std::fs::metadata(&built).unwrap();
        let stamp = format!(
            "{}-{}",
            md.len(),
            md.modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let dir = PathBuf::from("/tmp/backupctl-test-bin").join(stamp);
        let dest = dir.join("backupctl");
        // Every test process marks the copy it uses; a copy goes only when no test
        // process has started on it for an hour. (Its creation time is no guide: test
        // runs of an unchanged build reuse the same copy for as long as they go on, and
        // another checkout's run must not pull it from under them.)
        let last_used = |d: &Path| {
            std::fs::metadata(d.join("last-used"))
                .or_else(|_| std::fs::metadata(d))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
        };
        if !dest.exists() {
            // Copies of earlier builds keep a 300 MB binary each.
            if let Ok(old) = std::fs::read_dir("/tmp/backupctl-test-bin") {
                for e in old.flatten() {
                    if last_used(&e.path()).is_some_and(|age| age > Duration::from_secs(3600)) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            std::fs::create_dir_all(&dir).unwrap();
            let tmp = dir.join(format!(".backupctl-{}", std::process::id()));
            if std::fs::hard_link(&built, &tmp).is_err() {
                std::fs::copy(&built, &tmp).unwrap();
            }
            let _ = std::fs::rename(&tmp, &dest);
            let _ = std::fs::remove_file(&tmp);
        }
        let _ = std::fs::write(dir.join("last-used"), std::process::id().to_string());
        use std::os::unix::fs::PermissionsExt;
        for d in [Path::new("/tmp/backupctl-test-bin"), dir.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dest
    })
    .clone()
}

/// A loopback port no other server of this test process has been given. The test
/// clusters listen on Unix sockets only (`listen_addresses = ''`), so a free TCP port
/// alone does not mean a free PostgreSQL port: ports handed out are remembered.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Panic with the command's output unless it succeeded.
pub fn check_output(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------------------
// PostgreSQL clusters

/// Run SQL with psql against the server at `socket_dir`:`port` as `postgres`; returns
/// unaligned, tuples-only output. `what` names the server in the failure message.
pub fn psql_at(socket_dir: &Path, port: u16, db: &str, sql: &str, what: &str) -> String {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg("-h")
        .arg(socket_dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    let out = check_output(&format!("{what} {sql:?}"), out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `pg_ctl stop -m immediate` on `pgdata`, quietly, ignoring failure (for drops).
fn pg_ctl_stop_immediate(pgdata: &Path) {
    let _ = as_pg(Command::new(pg_bin("pg_ctl")).arg("-D").arg(pgdata).args([
        "-m",
        "immediate",
        "-w",
        "stop",
    ]))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status();
}

#[derive(Default, Clone)]
pub struct ClusterOptions {
    /// `archive_command`, with `archive_mode = on`.
    pub archive_command: Option<String>,
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
    /// Extra initdb arguments (`--wal-segsize=64`).
    pub initdb_args: Vec<String>,
}

/// A throwaway cluster: initdb'd into a temp dir, own Unix socket, no TCP listener.
pub struct Cluster {
    pub dir: TempDir,
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    running: bool,
}

impl Cluster {
    pub fn new(opts: ClusterOptions) -> Cluster {
        let (dir, pgdata, socket_dir) = Cluster::dirs();
        let out = as_pg(
            Command::new(pg_bin("initdb"))
                .arg("-D")
                .arg(&pgdata)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ])
                .args(&opts.initdb_args),
        )
        .output()
        .unwrap();
        check_output("initdb", out);
        let port = free_port();
        let mut conf = vec![
            format!("port = {port}"),
            "listen_addresses = ''".into(),
            format!("unix_socket_directories = '{}'", socket_dir.display()),
            "wal_level = replica".into(),
            "max_wal_senders = 4".into(),
            "fsync = off".into(),
            "shared_buffers = 32MB".into(),
            "max_connections = 40".into(),
            "log_min_messages = warning".into(),
        ];
        if let Some(cmd) = &opts.archive_command {
            conf.push("archive_mode = on".into());
            conf.push(format!("archive_command = '{}'", cmd.replace('\'', "''")));
            conf.push("archive_timeout = 0".into());
        }
        conf.extend(opts.conf.iter().cloned());
        let mut text = std::fs::read_to_string(pgdata.join("postgresql.conf")).unwrap();
        text.push_str("\n# test harness\n");
        text.push_str(&conf.join("\n"));
        text.push('\n');
        std::fs::write(pgdata.join("postgresql.conf"), text).unwrap();
        Cluster::started(dir, pgdata, socket_dir, port)
    }

    /// A streaming standby of `primary`: `pg_basebackup -R` of it, listening on a socket
    /// and port of its own. It keeps the primary's settings, `archive_mode` and
    /// `archive_command` included (a standby archives only once promoted).
    pub fn standby_of(primary: &Cluster) -> Cluster {
        let (dir, pgdata, socket_dir) = Cluster::dirs();
        let out = as_pg(
            Command::new(pg_client_bin_dir().join("pg_basebackup"))
                .arg("-D")
                .arg(&pgdata)
                .arg("-h")
                .arg(&primary.socket_dir)
                .args(["-p", &primary.port.to_string(), "-U", "postgres"])
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        )
        .output()
        .unwrap();
        check_output("pg_basebackup (standby)", out);
        let port = free_port();
        let mut text = std::fs::read_to_string(pgdata.join("postgresql.conf")).unwrap();
        text.push_str(&format!(
            "\n# test harness: standby\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            socket_dir.display()
        ));
        std::fs::write(pgdata.join("postgresql.conf"), text).unwrap();
        // The primary_conninfo `-R` wrote lists every option the client programs know
        // (18's write `sslnegotiation`, which a 16 server refuses): the last setting in
        // postgresql.auto.conf wins, so this one, with only what is needed, is used.
        let auto = pgdata.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap();
        text.push_str(&format!(
            "primary_conninfo = 'host={} port={} user=postgres'\n",
            primary.socket_dir.display(),
            primary.port
        ));
        std::fs::write(&auto, text).unwrap();
        Cluster::started(dir, pgdata, socket_dir, port)
    }

    /// `pg_ctl promote`, waiting until the server accepts writes.
    pub fn promote(&self) {
        let out = as_pg(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-w", "-t", "120", "promote"]),
        )
        .output()
        .unwrap();
        check_output("pg_ctl promote", out);
    }

    /// A temp dir for a new cluster: itself, where its data directory goes, and its
    /// socket directory (made, for the postgres user).
    fn dirs() -> (TempDir, PathBuf, PathBuf) {
        let dir = pg_tempdir();
        let pgdata = dir.path().join("pgdata");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).unwrap();
        chown_to_pg(&socket_dir);
        (dir, pgdata, socket_dir)
    }

    /// The cluster in `pgdata`, configured, started.
    fn started(dir: TempDir, pgdata: PathBuf, socket_dir: PathBuf, port: u16) -> Cluster {
        let log = dir.path().join("postgres.log");
        let mut c = Cluster {
            dir,
            pgdata,
            socket_dir,
            port,
            log,
            running: false,
        };
        c.start();
        c
    }

    /// Start (or restart) the server and wait until it accepts connections.
    pub fn start(&mut self) {
        let out = as_pg(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "120", "start"]),
        )
        .output()
        .unwrap();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n{}\nserver log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = as_pg(
                Command::new(pg_bin("pg_ctl"))
                    .arg("-D")
                    .arg(&self.pgdata)
                    .args(["-m", "fast", "-w", "-t", "60", "stop"]),
            )
            .output();
            self.running = false;
        }
    }

    /// Reload the configuration (pg_hba.conf, postgresql.conf) with `pg_ctl reload`,
    /// which needs no connection (authentication may just have changed).
    pub fn psql_reload(&self) {
        let out = as_pg(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .arg("reload"),
        )
        .output()
        .unwrap();
        check_output("pg_ctl reload", out);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    /// `pgbench -i -s SCALE` on database `postgres`.
    pub fn pgbench_init(&self, scale: u32) {
        let out = self
            .pgbench()
            .args(["-i", "-s", &scale.to_string(), "-q", "postgres"])
            .output()
            .unwrap();
        check_output("pgbench -i", out);
    }

    /// Start `pgbench ARGS… -n postgres` in the background; [`Load::finish`] waits for
    /// it and checks that it succeeded.
    pub fn pgbench_load(&self, args: &[&str]) -> Load {
        Load(
            self.pgbench()
                .args(args)
                .args(["-n", "postgres"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn pgbench(&self) -> Command {
        let mut cmd = Command::new(pg_bin("pgbench"));
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }

    /// libpq environment that reaches this cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", self.socket_dir.display().to_string()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", "postgres".into()),
            ("PGDATABASE", "postgres".into()),
        ]
    }

    /// `[postgres]` section for a backupctl config pointing at this cluster.
    pub fn postgres_toml(&self) -> String {
        format!(
            "[postgres]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\ndbname = \"postgres\"\n{}pgdata = \"{}\"\n",
            self.socket_dir.display(),
            self.port,
            bin_toml(),
            self.pgdata.display()
        )
    }

    /// Run SQL with psql; returns unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql_at(&self.socket_dir, self.port, db, sql, "psql")
    }

    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            pg_ctl_stop_immediate(&self.pgdata);
        }
    }
}

/// A cluster (with `opts`) on which `sql` ran, a local repository, and a config with
/// `extra` sections after the cluster's `[postgres]`.
pub fn cluster_with_config(
    opts: ClusterOptions,
    sql: &str,
    extra: &str,
) -> (Cluster, TestRepo, PathBuf) {
    let cluster = Cluster::new(opts);
    cluster.psql("postgres", sql);
    let t = TestRepo::new(Backend::Local);
    let config = t.write_config(
        "backup.toml",
        &format!("{}\n{extra}", cluster.postgres_toml()),
    );
    (cluster, t, config)
}

/// A session on `c` that looks like a backupctl `job` run on another host (db2, pid 4242)
/// holding the PostgreSQL advisory lock (`backupctl::pg::advisory::CLASS`, `key`).
pub fn lock_held_on_another_host(
    rt: &tokio::runtime::Runtime,
    c: &Cluster,
    job: &str,
    key: i32,
) -> tokio_postgres::Client {
    let other = rt.block_on(c.connect("postgres"));
    rt.block_on(other.execute(
        &format!("SELECT set_config('application_name', 'backupctl {job} (host db2, pid 4242)', false), pg_advisory_lock($1, {key})"),
        &[&backupctl::pg::advisory::CLASS],
    ))
    .unwrap();
    other
}

// ---------------------------------------------------------------------------------------
// S3 server

pub const S3_ACCESS_KEY: &str = "backupctl-test";
pub const S3_SECRET_KEY: &str = "backupctl-test-secret-key";

/// The s3s-fs binary: `S3S_FS`, else PATH, else ~/.cargo/bin.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    if let Ok(out) = Command::new("which").arg("s3s-fs").output() {
        if out.status.success() {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cargo/bin/s3s-fs");
    assert!(
        p.exists(),
        "s3s-fs not found: run scripts/test (it installs it) or `cargo install --locked s3s-fs@0.14.1 --features binary`"
    );
    p
}

/// A running s3s-fs on a free loopback port with one bucket.
pub struct S3Server {
    child: Child,
    pub root: TempDir,
    pub port: u16,
    pub bucket: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("backupctl-s3-")
            .tempdir()
            .unwrap();
        let bucket = "backups".to_string();
        std::fs::create_dir(root.path().join(&bucket)).unwrap();
        let port = free_port();
        let child = Self::spawn(root.path(), port);
        S3Server {
            child,
            root,
            port,
            bucket,
        }
    }

    fn spawn(root: &Path, port: u16) -> Child {
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Stop the server (an outage): connections are refused until [`S3Server::resume`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the server again on the same port, serving the same files.
    pub fn resume(&mut self) {
        self.child = Self::spawn(self.root.path(), self.port);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Files under the bucket directory (what is visible as objects).
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(&self.bucket)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Repositories of both kinds

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
}

/// A repository for one test: a local directory, or a bucket prefix on a private s3s-fs.
pub struct TestRepo {
    pub backend: Backend,
    /// Holds the local repository, the S3 secret file, and configs.
    pub dir: TempDir,
    pub s3: Option<S3Server>,
}

impl TestRepo {
    pub fn new(backend: Backend) -> TestRepo {
        let dir = pg_tempdir();
        let s3 = (backend == Backend::S3).then(S3Server::start);
        if s3.is_some() {
            let secret = dir.path().join("s3-secret");
            std::fs::write(&secret, S3_SECRET_KEY).unwrap();
            chown_to_pg(&secret);
        }
        TestRepo { backend, dir, s3 }
    }

    /// `[repository]` section.
    pub fn repository_toml(&self) -> String {
        match &self.s3 {
            None => format!(
                "[repository]\ntype = \"local\"\npath = \"{}\"\ncluster = \"main\"\n",
                self.dir.path().join("repo").display()
            ),
            Some(s3) => format!(
                "[repository]\ntype = \"s3\"\nbucket = \"{}\"\nprefix = \"pg/\"\ncluster = \"main\"\nendpoint = \"{}\"\nforce_path_style = true\naccess_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\npart_size_mib = 5\n",
                s3.bucket,
                s3.endpoint(),
                S3_ACCESS_KEY,
                self.dir.path().join("s3-secret").display()
            ),
        }
    }

    /// Write a complete config (repository + `extra` sections) and return its path.
    pub fn write_config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let state = self.dir.path().join("state");
        let text = format!(
            "{}\n[backup]\nstate_dir = \"{}\"\n\n{extra}\n",
            self.repository_toml(),
            state.display()
        );
        std::fs::write(&path, text).unwrap();
        chown_to_pg(&path);
        path
    }

    /// Open the repository in-process, as backupctl would with this config.
    /// Delete `key` through the repository API (either backend).
    pub fn delete(&self, key: &str) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { self.open().await.delete(key).await.unwrap() })
    }

    /// Every key under `prefix`, through the repository API (either backend).
    pub fn list_keys(&self, prefix: &str) -> Vec<String> {
        use backupctl::repo::RepositoryExt;
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { self.open().await.list_keys(prefix).await.unwrap() })
    }

    pub async fn open(&self) -> Arc<dyn Repository> {
        let path = self.write_config("open.toml", "");
        let cfg = Config::load(Some(&path)).unwrap();
        backupctl::repo::open(&cfg).await.unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// Running backupctl

/// `backupctl --config <config> args…`, run as the postgres user when root.
pub fn backupctl(config: &Path, args: &[&str]) -> Output {
    backupctl_env(config, args, &[])
}

pub fn backupctl_env(config: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(backupctl_bin());
    cmd.arg("--config").arg(config).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    as_pg(&mut cmd).output().unwrap()
}

/// Start backupctl (as the postgres user when root) without waiting for it.
pub fn spawn_backupctl(config: &Path, args: &[&str]) -> Child {
    let mut cmd = Command::new(backupctl_bin());
    cmd.arg("--config").arg(config).args(args);
    as_pg(&mut cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Send `sig` (`STOP`, `CONT`, `KILL`, …) to `child`.
pub fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The command's stdout as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

/// Every file below `dir`, recursively (nothing when it is absent).
pub fn walk(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// The `archive_command` that archives into the repository of `config`.
pub fn archive_command(config: &Path) -> String {
    format!(
        "{} --config {} wal-push %p",
        backupctl_bin().display(),
        config.display()
    )
}

// ---------------------------------------------------------------------------------------
// WAL archiving and restored servers

/// Close the current WAL segment and wait until the archiver has pushed it.
///
/// A record is written first: on a segment that holds nothing yet, `pg_switch_wal()`
/// switches nothing and returns a position inside that empty segment, which is then
/// never archived (seen on PostgreSQL 18 right after a backup's own switch).
pub fn switch_wal_and_wait(c: &Cluster) {
    let out = c.psql(
        "postgres",
        "SELECT pg_logical_emit_message(false, 'backupctl-test', 'switch'); \
         SELECT pg_walfile_name(pg_switch_wal())",
    );
    let seg = out.lines().last().unwrap_or_default().to_string();
    wait_archived(c, &seg);
}

/// Wait until `segment` (or a later one) has been archived.
pub fn wait_archived(c: &Cluster, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = c.psql(
            "postgres",
            &format!("SELECT coalesce(last_archived_wal, '') >= '{segment}' FROM pg_stat_archiver"),
        );
        if done == "t" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "segment {segment} was not archived in time; archiver: {}\nserver log:\n{}",
            c.psql(
                "postgres",
                "SELECT row(pg_stat_archiver.*)::text FROM pg_stat_archiver"
            ),
            c.server_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `pgbench` run in the background.
pub struct Load(Child);

impl Load {
    /// Wait for the run to end; it must have succeeded.
    pub fn finish(self) {
        let out = self.0.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A server `backupctl restore --start` left running; stopped on drop.
pub struct Restored {
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    /// Removed after the server is stopped.
    pub dir: Option<TempDir>,
}

impl Restored {
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql_at(&self.socket_dir, self.port, db, sql, "psql (restored)")
    }

    pub fn stop(&self) {
        let _ = as_pg(
            Command::new(pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-m", "fast", "-w", "stop"]),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if self.pgdata.join("postmaster.pid").exists() {
            pg_ctl_stop_immediate(&self.pgdata);
        }
    }
}

/// Run `openssl args…` in `dir`; it must succeed (test certificates).
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `check` output line that contains `name`, with its indented continuation lines
/// (the fix).
pub fn check_line(text: &str, name: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.contains(name));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no {name} line:\n{text}"));
    let rest: Vec<&str> = lines.take_while(|l| l.starts_with(' ')).collect();
    format!("{first}\n{}", rest.join("\n"))
}
