//! Connections to the PostgreSQL server being backed up (tokio-postgres).
//!
//! Settings come from `[postgres]`, then the usual libpq environment variables
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`), then libpq's defaults
//! (Debian's socket directory, port 5432, the OS user). A host starting with `/` is a
//! Unix socket directory. The password never appears in messages.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

use crate::config::PostgresConfig;

/// Connection parameters after applying config, environment and defaults.
#[derive(Clone)]
pub struct ConnParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    password: Option<String>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ConnParams {
    pub fn from_config(cfg: &PostgresConfig) -> anyhow::Result<ConnParams> {
        let mut base = match &cfg.connection {
            Some(s) => s.parse::<tokio_postgres::Config>().map_err(|e| {
                crate::user_error!("key `postgres.connection`: not a valid connection string: {e}")
            })?,
            None => tokio_postgres::Config::new(),
        };
        let from_conn_host = base.get_hosts().first().map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        });
        let host = cfg
            .host
            .clone()
            .or(from_conn_host)
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(|| "/var/run/postgresql".into());
        let port = match cfg.port.or_else(|| base.get_ports().first().copied()) {
            Some(p) => p,
            None => match env("PGPORT") {
                Some(p) => p
                    .parse()
                    .map_err(|_| crate::user_error!("PGPORT={p:?} is not a port number"))?,
                None => 5432,
            },
        };
        let user = cfg
            .user
            .clone()
            .or_else(|| base.get_user().map(str::to_string))
            .or_else(|| env("PGUSER"))
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".into());
        let dbname = cfg
            .dbname
            .clone()
            .or_else(|| base.get_dbname().map(str::to_string))
            .or_else(|| env("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let password = match &cfg.password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| {
                        crate::user_error!(
                            "cannot read postgres.password_file {}: {e}",
                            file.display()
                        )
                    })?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            None => base
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .or_else(|| env("PGPASSWORD")),
        };
        base.password(""); // never keep a copy in the parsed struct
        Ok(ConnParams {
            host,
            port,
            user,
            dbname,
            password,
            connect_timeout: cfg.connect_timeout,
        })
    }

    /// `host=… port=… user=… dbname=…` (no password), for messages.
    pub fn describe(&self) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host, self.port, self.user, self.dbname
        )
    }

    /// The same parameters for another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnParams {
        ConnParams {
            dbname: dbname.to_string(),
            ..self.clone()
        }
    }

    /// Environment for libpq-based child processes (pg_dump, psql): they read the same
    /// server and credentials without the password appearing on a command line.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGAPPNAME", "backupctl".into()),
        ];
        if let Some(p) = &self.password {
            v.push(("PGPASSWORD", p.clone()));
        }
        v
    }

    fn to_pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("backupctl")
            .connect_timeout(self.connect_timeout);
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }

    /// Connect; the connection task runs in the background until the client is dropped.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let (client, connection) = self
            .to_pg_config()
            .connect(NoTls)
            .await
            .with_context(|| format!("connect to PostgreSQL ({})", self.describe()))?;
        // Tracked so the process can wait for it before exiting: once the `Client` is
        // dropped the connection sends Terminate and ends. A runtime shut down before
        // that cuts the socket, and the server logs `FATAL: connection to client lost`.
        connections().spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }
}

fn connections() -> &'static tokio_util::task::TaskTracker {
    static TRACKER: std::sync::OnceLock<tokio_util::task::TaskTracker> = std::sync::OnceLock::new();
    TRACKER.get_or_init(tokio_util::task::TaskTracker::new)
}

/// Wait up to `limit` for the connections whose `Client` was dropped to close cleanly
/// (Terminate sent, socket closed); `false` if some are still open (a `Client` is still
/// held). Called before the process exits.
pub async fn wait_closed(limit: std::time::Duration) -> bool {
    let t = connections();
    t.close();
    let done = tokio::time::timeout(limit, t.wait()).await.is_ok();
    t.reopen();
    done
}

/// Connect with the `[postgres]` settings.
pub async fn connect(cfg: &PostgresConfig) -> anyhow::Result<Client> {
    ConnParams::from_config(cfg)?.connect().await
}

/// Facts about the server every command wants.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub version_num: u32,
    pub system_identifier: u64,
    pub data_directory: String,
    pub wal_segment_size: u64,
    pub timeline: u32,
    pub in_recovery: bool,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }

    pub async fn query(client: &Client) -> anyhow::Result<ServerInfo> {
        let row = client
            .query_one(
                "SELECT current_setting('server_version'),
                        current_setting('server_version_num')::int,
                        (SELECT system_identifier::text FROM pg_control_system()),
                        current_setting('data_directory'),
                        pg_size_bytes(current_setting('wal_segment_size')),
                        (SELECT timeline_id FROM pg_control_checkpoint()),
                        pg_is_in_recovery()",
                &[],
            )
            .await
            .context(
                "read server information (needs superuser or pg_read_all_settings and pg_monitor)",
            )?;
        let sysid: String = row.get(2);
        Ok(ServerInfo {
            version: row.get(0),
            version_num: row.get::<_, i32>(1) as u32,
            system_identifier: sysid.parse().context("parse system identifier")?,
            data_directory: row.get(3),
            wal_segment_size: row.get::<_, i64>(4) as u64,
            timeline: row.get::<_, i32>(5) as u32,
            in_recovery: row.get(6),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_override_connection_string() {
        let cfg = PostgresConfig {
            connection: Some("host=/tmp port=6000 user=alice dbname=app password=s3cret".into()),
            port: Some(7000),
            ..Default::default()
        };
        let p = ConnParams::from_config(&cfg).unwrap();
        assert_eq!(p.host, "/tmp");
        assert_eq!(p.port, 7000);
        assert_eq!(p.user, "alice");
        assert_eq!(p.dbname, "app");
        assert!(!p.describe().contains("s3cret"));
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(p.libpq_env().contains(&("PGPASSWORD", "s3cret".into())));
    }

    #[test]
    fn password_file_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\nignored\n").unwrap();
        let cfg = PostgresConfig {
            host: Some("/tmp".into()),
            password_file: Some(f),
            ..Default::default()
        };
        let p = ConnParams::from_config(&cfg).unwrap();
        assert_eq!(p.password.as_deref(), Some("hunter2"));
    }
}
