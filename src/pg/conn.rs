//! Connections to the PostgreSQL server being backed up (tokio-postgres).
//!
//! Settings come from `[postgres]`, then the usual libpq environment variables
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`), then libpq's defaults
//! (Debian's socket directory, port 5432, the OS user). A host starting with `/` is a
//! Unix socket directory. TLS follows libpq's `sslmode` and friends (see [`super::tls`]).
//! The password never appears in messages, and reaches child programs through a
//! private temporary `PGPASSFILE`, never their environment.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::config::SslMode as WireSslMode;
use tokio_postgres::{Client, NoTls};

use super::tls::{self, TlsSettings};
use crate::config::{PostgresConfig, SslMode};

/// Connection parameters after applying config, environment and defaults.
#[derive(Clone)]
pub struct ConnParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    password: Option<String>,
    pub connect_timeout: Duration,
    pub tls: TlsSettings,
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
        let invalid = |e: &dyn std::fmt::Display| {
            crate::user_error!("key `postgres.connection`: not a valid connection string: {e}")
        };
        let (mut base, conn_tls) = match &cfg.connection {
            Some(s) => {
                let (rest, conn_tls) = tls::split_conn_string(s).map_err(|e| invalid(&e))?;
                let base = rest
                    .parse::<tokio_postgres::Config>()
                    .map_err(|e| invalid(&e))?;
                (base, conn_tls)
            }
            None => (tokio_postgres::Config::new(), Default::default()),
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
                           // A Unix socket never uses TLS (as in libpq), so TLS settings that could not be
                           // honoured over TCP (say, PGSSLMODE=verify-full without a root certificate in the
                           // environment) do not stop it.
        let tls = match TlsSettings::resolve(cfg, &conn_tls) {
            Err(_) if tls::is_unix_socket(&host) => TlsSettings::none(),
            other => other?,
        };
        Ok(ConnParams {
            host,
            port,
            user,
            dbname,
            password,
            connect_timeout: cfg.connect_timeout,
            tls,
        })
    }

    /// `host=… port=… user=… dbname=…` (no password), plus `sslmode=…` over TCP, for
    /// messages.
    pub fn describe(&self) -> String {
        let ssl = if self.uses_unix_socket() {
            String::new()
        } else {
            format!(" sslmode={}", self.tls.mode.as_str())
        };
        format!(
            "host={} port={} user={} dbname={}{ssl}",
            self.host, self.port, self.user, self.dbname
        )
    }

    /// A Unix-socket connection: never TLS, whatever `sslmode` says (as in libpq).
    pub fn uses_unix_socket(&self) -> bool {
        tls::is_unix_socket(&self.host)
    }

    /// The same parameters for another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnParams {
        ConnParams {
            dbname: dbname.to_string(),
            ..self.clone()
        }
    }

    /// Environment for libpq-based child processes (pg_dump, psql): they reach the same
    /// server with the same TLS settings and credentials. The password goes into a
    /// private temporary `PGPASSFILE` that lives as long as the returned value: keep it
    /// until the child has exited.
    pub fn child_env(&self) -> anyhow::Result<ChildEnv> {
        let mut vars = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGAPPNAME", "backupctl".into()),
            (
                "PGCONNECT_TIMEOUT",
                self.connect_timeout.as_secs().max(2).to_string(),
            ),
        ];
        vars.extend(self.tls.libpq_env());
        let passfile = match &self.password {
            None => None,
            Some(p) => {
                // tempfile creates it 0600, which libpq requires of a password file.
                let mut f = tempfile::Builder::new()
                    .prefix("backupctl-pgpass-")
                    .tempfile()
                    .context("create a temporary password file for pg_dump/pg_restore")?;
                // Every host, port, database and user: this file serves one child.
                writeln!(f, "*:*:*:*:{}", pgpass_escape(p))
                    .and_then(|()| f.flush())
                    .context("write the temporary password file")?;
                let path = f.into_temp_path();
                vars.push(("PGPASSFILE", path.display().to_string()));
                Some(path)
            }
        };
        Ok(ChildEnv {
            vars,
            _passfile: passfile,
        })
    }

    fn to_pg_config(&self, ssl: WireSslMode) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.ssl_mode(ssl);
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
        let mode = if self.uses_unix_socket() {
            SslMode::Disable
        } else {
            self.tls.mode
        };
        let result = match mode {
            SslMode::Disable => self.connect_with(WireSslMode::Disable).await,
            // Plaintext first; TLS only when the server turns plaintext away (pg_hba.conf
            // `hostssl`), as libpq does.
            SslMode::Allow => match self.connect_with(WireSslMode::Disable).await {
                Err(e) if rejected_by_pg_hba(&e) => self.connect_with(WireSslMode::Require).await,
                other => other,
            },
            SslMode::Prefer => self.connect_with(WireSslMode::Prefer).await,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                self.connect_with(WireSslMode::Require).await
            }
        };
        result.map_err(|e| {
            let text = format!("{e:#}");
            match tls::explain(&text, &self.tls, &self.host) {
                Some(fix) => {
                    crate::user_error!("connect to PostgreSQL ({}): {text}; {fix}", self.describe())
                }
                None => e.context(format!("connect to PostgreSQL ({})", self.describe())),
            }
        })
    }

    async fn connect_with(&self, ssl: WireSslMode) -> anyhow::Result<Client> {
        let config = self.to_pg_config(ssl);
        if ssl == WireSslMode::Disable {
            let (client, connection) = config.connect(NoTls).await?;
            track(connection);
            return Ok(client);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls.client_config()?);
        let (client, connection) = config.connect(tls).await?;
        track(connection);
        Ok(client)
    }
}

/// The live process environment of a child program: see [`ConnParams::child_env`].
pub struct ChildEnv {
    vars: Vec<(&'static str, String)>,
    _passfile: Option<tempfile::TempPath>,
}

impl ChildEnv {
    /// Set the variables on `cmd`, and clear the ones that would override them from
    /// backupctl's own environment (a `PGPASSWORD` there is already in the pass file).
    pub fn apply<'a>(&self, cmd: &'a mut std::process::Command) -> &'a mut std::process::Command {
        cmd.env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLROOTCERT")
            .env_remove("PGSSLCERT")
            .env_remove("PGSSLKEY")
            .envs(self.vars.iter().map(|(k, v)| (*k, v)))
    }

    #[cfg(test)]
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `.pgpass` escaping: `\` and `:` are backslash-escaped.
fn pgpass_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// The server refused this connection in pg_hba.conf (e.g. only `hostssl` lines match).
fn rejected_by_pg_hba(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .filter_map(|p| p.as_db_error())
        .any(|d| d.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
}

/// Run a connection in the background, tracked so the process can wait for it before
/// exiting: once the `Client` is dropped the connection sends Terminate and ends. A
/// runtime shut down before that cuts the socket, and the server logs `FATAL: connection
/// to client lost`.
fn track<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    connections().spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
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

/// Parameters reaching a standby's primary from `postgres.primary_conninfo`: its host,
/// port, user and database come from that string alone (then libpq's environment and
/// defaults); the section's password file and TLS keys apply where the string does not
/// set a password or that TLS setting itself.
pub fn primary_params(cfg: &PostgresConfig, conninfo: &str) -> anyhow::Result<ConnParams> {
    let invalid = |e: &dyn std::fmt::Display| {
        crate::user_error!("key `postgres.primary_conninfo`: not a valid connection string: {e}")
    };
    let (rest, own_tls) = tls::split_conn_string(conninfo).map_err(|e| invalid(&e))?;
    let own = rest
        .parse::<tokio_postgres::Config>()
        .map_err(|e| invalid(&e))?;
    // What the string says for itself wins over the section's keys (which otherwise
    // override a connection string): the primary may need other credentials or TLS.
    ConnParams::from_config(&PostgresConfig {
        connection: Some(conninfo.to_string()),
        host: None,
        port: None,
        user: None,
        dbname: None,
        primary_conninfo: None,
        password_file: cfg
            .password_file
            .clone()
            .filter(|_| own.get_password().is_none()),
        sslmode: cfg.sslmode.filter(|_| own_tls.sslmode.is_none()),
        sslrootcert: cfg
            .sslrootcert
            .clone()
            .filter(|_| own_tls.sslrootcert.is_none()),
        sslcert: cfg.sslcert.clone().filter(|_| own_tls.sslcert.is_none()),
        sslkey: cfg.sslkey.clone().filter(|_| own_tls.sslkey.is_none()),
        ..cfg.clone()
    })
    .map_err(|e| {
        // Errors about the string name the section's connection key; this is another.
        anyhow::anyhow!(
            "{}",
            format!("{e:#}").replace("postgres.connection", "postgres.primary_conninfo")
        )
    })
}

/// Connect to a standby's primary through `postgres.primary_conninfo` and make sure it
/// is that standby's primary: not in recovery, the same system identifier. Returns how
/// it was reached (for messages) and the connection.
pub async fn connect_primary(
    cfg: &PostgresConfig,
    conninfo: &str,
    standby_system_identifier: u64,
) -> anyhow::Result<(String, Client)> {
    let params = primary_params(cfg, conninfo)?;
    let client = params.connect().await?;
    let at = params.describe();
    let primary = ServerInfo::query(&client).await?;
    if primary.in_recovery {
        anyhow::bail!(
            "postgres.primary_conninfo reaches {at}, which is in recovery too: point it at the primary"
        );
    }
    if primary.system_identifier != standby_system_identifier {
        anyhow::bail!(
            "postgres.primary_conninfo reaches {at}, system identifier {}; this standby's is \
             {standby_system_identifier}: point it at this standby's primary",
            primary.system_identifier
        );
    }
    Ok((at, client))
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
        let env = p.child_env().unwrap();
        assert_eq!(env.get("PGPASSWORD"), None);
        let passfile = std::path::PathBuf::from(env.get("PGPASSFILE").unwrap());
        assert_eq!(
            std::fs::read_to_string(&passfile).unwrap(),
            "*:*:*:*:s3cret\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&passfile).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        drop(env);
        assert!(!passfile.exists(), "the pass file outlived its child");
    }

    #[test]
    fn the_primary_is_reached_through_primary_conninfo_alone() {
        let cfg = PostgresConfig {
            host: Some("/var/run/postgresql".into()),
            port: Some(5433),
            user: Some("standby_user".into()),
            dbname: Some("app".into()),
            primary_conninfo: Some("unused here".into()),
            ..Default::default()
        };
        let p = primary_params(
            &cfg,
            "host=db1.internal port=6000 user=backupctl dbname=postgres password=s3cret",
        )
        .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.as_str(), p.dbname.as_str()),
            ("db1.internal", 6000, "backupctl", "postgres")
        );
        assert!(!p.describe().contains("s3cret"));
        let err = primary_params(&cfg, "host=db1 port=notaport")
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres.primary_conninfo"), "{err}");
        // What the string sets for itself beats the section's keys.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "standby-password\n").unwrap();
        let cfg = PostgresConfig {
            sslmode: Some(SslMode::Require),
            password_file: Some(pw),
            ..cfg
        };
        let own =
            primary_params(&cfg, "host=db1 sslmode=disable password=primary-password").unwrap();
        assert_eq!(own.tls.mode, SslMode::Disable);
        assert_eq!(own.password.as_deref(), Some("primary-password"));
        let inherited = primary_params(&cfg, "host=db1").unwrap();
        assert_eq!(inherited.tls.mode, SslMode::Require);
        assert_eq!(inherited.password.as_deref(), Some("standby-password"));
        // A word without "=" (here the tail of an unquoted password) is not repeated.
        let err = primary_params(&cfg, "host=db1 password=correct horse")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("horse"), "{err}");
    }

    #[test]
    fn tls_settings_that_cannot_be_honoured_do_not_stop_a_unix_socket() {
        let mut cfg = PostgresConfig {
            host: Some("/var/run/postgresql".into()),
            sslmode: Some(SslMode::VerifyFull),
            sslrootcert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let p = ConnParams::from_config(&cfg).unwrap();
        assert_eq!(p.tls.mode, SslMode::Disable);
        cfg.host = Some("db.example".into());
        let err = ConnParams::from_config(&cfg).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn pgpass_escapes_colons_and_backslashes() {
        assert_eq!(pgpass_escape(r"a:b\c"), r"a\:b\\c");
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
