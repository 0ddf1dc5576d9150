//! `backup.toml`: the serde structs, defaults, validation and path resolution.
//!
//! Every section denies unknown keys so a typo never silently falls back to a default.
//! Parsing goes through `serde_path_to_error` so an error names the full key
//! (`repository.bukket`), and [`Config::validate`] checks what serde cannot (cross-field
//! rules, cron expressions, durations) with messages that say how to fix the file.
//!
//! Relative paths in a config file are resolved against the file's directory; in the
//! embedded default (no file) against the current directory. After loading, every path
//! in the struct is absolute, so the config can be handed to PostgreSQL (archive_command,
//! restore_command) whose working directory is PGDATA.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::UserError;

/// The commented example at the top of the repository, used when no config file exists.
pub const EMBEDDED_DEFAULT: &str = include_str!("../backup.toml");

/// Local repository root when `repository.path` is not set.
pub const DEFAULT_LOCAL_REPOSITORY: &str = "/var/lib/backupctl/repo";

/// Default location of the config file (overridden by `--config` / `BACKUPCTL_CONFIG`).
pub const DEFAULT_PATH: &str = "/etc/backupctl/backup.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// Every repository: one `[repository]` table or several `[[repository]]` entries.
    #[serde(rename = "repository", default)]
    pub repositories: Repositories,
    /// The repository commands act on: the first one, or the one `--repo` selected
    /// ([`Config::select_repository`]). Operations that write to every repository of a
    /// kind (wal-push, backups) iterate over [`Config::repositories_for`].
    #[serde(skip)]
    pub repository: RepositoryConfig,
    /// The repository `--repo` selected, passed on to the commands a restore writes
    /// into the restored server's configuration.
    #[serde(skip)]
    pub selected_repository: Option<String>,
    /// The repositories `--repo` left out: what retention of WAL must still consider
    /// (their backups read WAL from the selected one).
    #[serde(skip)]
    pub unselected_repositories: Vec<RepositoryConfig>,
    #[serde(default)]
    pub compression: CompressionConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub logical: LogicalConfig,
    #[serde(default)]
    pub restore: RestoreConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub partitions: Vec<PartitionPolicy>,
    #[serde(default)]
    pub archive: Vec<ArchivePolicy>,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub wal: WalConfig,
    #[serde(default)]
    pub check: CheckConfig,
    #[serde(default)]
    pub display: DisplayConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,

    /// Where this config came from: `None` for the embedded default.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string or URL; the discrete keys below override its parts.
    pub connection: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub dbname: Option<String>,
    /// File holding the password (first line). `PGPASSWORD` is used when absent.
    pub password_file: Option<PathBuf>,
    /// Server programs (initdb, pg_ctl, postgres) of the server's major version; also
    /// the client programs unless `client_bin_dir` is set.
    pub bin_dir: Option<PathBuf>,
    /// Client programs (pg_dump, pg_restore, …) when they live apart from the server
    /// programs; the server's major version or newer.
    pub client_bin_dir: Option<PathBuf>,
    pub pgdata: Option<PathBuf>,
    /// On a standby: a connection string (or URL) reaching its primary. A physical
    /// backup of the standby ends inside a WAL segment the primary is still writing;
    /// with this set it asks the primary to end it (`pg_switch_wal()`) instead of
    /// waiting for the primary's `archive_timeout`. Host, port, user and database come
    /// from this string; `password_file` and the TLS keys of this section apply.
    pub primary_conninfo: Option<String>,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// TLS, with libpq's meaning: overrides `sslmode` in `connection` and `PGSSLMODE`;
    /// libpq's default is `prefer`.
    pub sslmode: Option<SslMode>,
    /// CA certificate file (PEM) the server's certificate must chain to, or `system` for
    /// the operating system's roots (libpq default: `~/.postgresql/root.crt`).
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that authenticate clients by certificate
    /// (libpq default: `~/.postgresql/postgresql.crt`).
    pub sslcert: Option<PathBuf>,
    /// The client certificate's private key (PEM) (libpq default:
    /// `~/.postgresql/postgresql.key`).
    pub sslkey: Option<PathBuf>,
}

/// libpq's `sslmode`: how much TLS a connection insists on and what it verifies.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plaintext first; TLS when the server refuses plaintext.
    Allow,
    /// TLS when the server offers it, else plaintext (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is checked only when a root certificate is there.
    Require,
    /// TLS, with a certificate that chains to `sslrootcert`.
    VerifyCa,
    /// TLS, with a certificate that chains to `sslrootcert` and names the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SslMode, String> {
        [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| {
            format!(
                "sslmode {s:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RepositoryType {
    #[default]
    Local,
    S3,
}

/// The repositories of a config: `[repository]` (one) or `[[repository]]` (several).
#[derive(Debug, Clone)]
pub struct Repositories(pub Vec<RepositoryConfig>);

impl Default for Repositories {
    fn default() -> Self {
        Repositories(vec![RepositoryConfig::default()])
    }
}

impl<'de> Deserialize<'de> for Repositories {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        struct OneOrMany;
        impl<'de> serde::de::Visitor<'de> for OneOrMany {
            type Value = Repositories;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [repository] table or [[repository]] entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Repositories, A::Error> {
                RepositoryConfig::deserialize(MapAccessDeserializer::new(map))
                    .map(|r| Repositories(vec![r]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Repositories, A::Error> {
                Vec::<RepositoryConfig>::deserialize(SeqAccessDeserializer::new(seq))
                    .map(Repositories)
            }
        }
        d.deserialize_any(OneOrMany)
    }
}

/// What a repository receives (`kinds` of a `[[repository]]` entry).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredKind {
    Wal,
    Physical,
    Logical,
    Exports,
}

impl StoredKind {
    pub const ALL: [StoredKind; 4] = [
        StoredKind::Wal,
        StoredKind::Physical,
        StoredKind::Logical,
        StoredKind::Exports,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StoredKind::Wal => "wal",
            StoredKind::Physical => "physical",
            StoredKind::Logical => "logical",
            StoredKind::Exports => "exports",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Its name for `--repo`, messages and `state_dir` (default `repo1`, `repo2`, … by
    /// position).
    #[serde(default)]
    pub name: String,
    /// What it receives (default: everything).
    #[serde(default = "defaults::kinds")]
    pub kinds: Vec<StoredKind>,
    /// `false`: a failure to store here does not fail the command. WAL that could not
    /// be stored is queued in `state_dir` and catches up later; a backup copy that
    /// failed is reported and left to the next backup.
    #[serde(default = "defaults::yes")]
    pub required: bool,
    #[serde(rename = "type", default)]
    pub kind: RepositoryType,
    /// Local repository root (local only; default /var/lib/backupctl/repo).
    pub path: Option<PathBuf>,
    /// `path` was not configured: it is [`DEFAULT_LOCAL_REPOSITORY`]. Reading commands
    /// refuse a default path that does not exist (see `repo::require_existing`) instead
    /// of reporting an empty repository.
    #[serde(skip)]
    pub path_defaulted: bool,
    /// Name of this cluster inside the repository.
    #[serde(default = "defaults::cluster")]
    pub cluster: String,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// A PEM file of CA certificates trusted for an `https://` endpoint besides the
    /// system's (a private CA, or a self-signed certificate in front of an S3-compatible
    /// server).
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub force_path_style: bool,
    pub storage_class: Option<String>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Static credentials (optional; the standard AWS chain is used otherwise).
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Multipart part size in MiB (S3 only).
    #[serde(default = "defaults::part_size_mib")]
    pub part_size_mib: u64,
    /// Parts uploaded concurrently per object (S3 only).
    #[serde(default = "defaults::upload_concurrency")]
    pub upload_concurrency: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Zstd,
    Gzip,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Compression level; `None` = the algorithm's default (zstd 3, gzip 6).
    pub level: Option<i32>,
    /// zstd worker threads per stream (0 = compress on the calling thread).
    #[serde(default)]
    pub threads: u32,
    /// Per-kind overrides of the keys above: `[compression.wal]`, `[compression.physical]`,
    /// `[compression.logical]`, `[compression.exports]`.
    #[serde(default)]
    pub wal: Option<CompressionOverride>,
    #[serde(default)]
    pub physical: Option<CompressionOverride>,
    #[serde(default)]
    pub logical: Option<CompressionOverride>,
    #[serde(default)]
    pub exports: Option<CompressionOverride>,
}

/// `[compression.<kind>]`: what differs for one kind of data.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionOverride {
    pub algorithm: Option<Algorithm>,
    pub level: Option<i32>,
    pub threads: Option<u32>,
}

/// The kinds of data the repository stores, each with its own compression settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Wal,
    Physical,
    Logical,
    Exports,
}

impl DataKind {
    pub const ALL: [DataKind; 4] = [
        DataKind::Wal,
        DataKind::Physical,
        DataKind::Logical,
        DataKind::Exports,
    ];

    /// The name of its `[compression.<kind>]` table.
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Wal => "wal",
            DataKind::Physical => "physical",
            DataKind::Logical => "logical",
            DataKind::Exports => "exports",
        }
    }
}

impl CompressionConfig {
    /// The settings for `kind`: its `[compression.<kind>]` keys over the section's. An
    /// override that changes the algorithm without a level gets that algorithm's default
    /// level (the section's level belongs to the section's algorithm).
    pub fn for_kind(&self, kind: DataKind) -> CompressionConfig {
        let o = match kind {
            DataKind::Wal => &self.wal,
            DataKind::Physical => &self.physical,
            DataKind::Logical => &self.logical,
            DataKind::Exports => &self.exports,
        };
        let base = CompressionConfig {
            algorithm: self.algorithm,
            level: self.level,
            threads: self.threads,
            wal: None,
            physical: None,
            logical: None,
            exports: None,
        };
        let Some(o) = o else {
            return base;
        };
        let algorithm = o.algorithm.unwrap_or(self.algorithm);
        CompressionConfig {
            algorithm,
            level: o
                .level
                .or(self.level.filter(|_| algorithm == self.algorithm)),
            threads: o.threads.unwrap_or(self.threads),
            ..base
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Parallel copy/compress/upload workers; default = number of CPUs.
    pub workers: Option<usize>,
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// How long a physical backup waits for its stop segment to reach the repository.
    #[serde(default = "defaults::archive_timeout", with = "humantime_serde_compat")]
    pub archive_timeout: Duration,
    /// Target size of one tar part of a physical backup, in MiB (before compression).
    #[serde(default = "defaults::tar_part_mib")]
    pub part_size_mib: u64,
    /// `pg_backup_start(fast => …)`: request an immediate checkpoint.
    #[serde(default = "defaults::yes")]
    pub fast_checkpoint: bool,
    /// `[backup.incremental]`: incremental physical backups.
    #[serde(default)]
    pub incremental: IncrementalConfig,
}

/// `[backup.incremental]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalConfig {
    /// The longest chain of incremental backups after a full one: an incremental backup
    /// whose newest parent is this many links from its full backup is taken full.
    #[serde(default = "defaults::max_chain")]
    pub max_chain: u32,
}

impl Default for IncrementalConfig {
    fn default() -> Self {
        IncrementalConfig {
            max_chain: defaults::max_chain(),
        }
    }
}

impl BackupConfig {
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(cpus)
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogicalConfig {
    /// Databases to dump; empty = every connectable non-template database.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Include role passwords in the globals dump.
    #[serde(default)]
    pub include_passwords: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// Parallel download/extract workers; default = `backup.workers`.
    pub workers: Option<usize>,
    /// How long a restore's lease keeps retention from deleting the restored backup and
    /// the WAL after it: long enough for the restored server to be started and to
    /// finish recovery. `restore --start` gives the lease back once recovery has ended.
    #[serde(default = "defaults::restore_lease", with = "humantime_serde_compat")]
    pub lease: Duration,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            workers: None,
            lease: defaults::restore_lease(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// IANA time zone the cron expressions are read in.
    #[serde(default = "defaults::utc")]
    pub timezone: String,
    pub physical: Option<String>,
    /// Incremental physical backups (full when there is no parent, or the chain has
    /// `backup.incremental.max_chain` links).
    pub incremental: Option<String>,
    pub logical: Option<String>,
    pub verify: Option<String>,
    pub retention: Option<String>,
    pub partitions: Option<String>,
    pub archive: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub keep_last: Option<u32>,
    #[serde(default, with = "humantime_serde_compat::option")]
    pub keep_within: Option<Duration>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default = "defaults::retention_rule")]
    pub physical: RetentionRule,
    #[serde(default = "defaults::retention_rule")]
    pub logical: RetentionRule,
    /// Rules for labelled backups, by label (e.g. `[retention.labels.pre-migration]`).
    #[serde(default)]
    pub labels: BTreeMap<String, RetentionRule>,
    /// `"backups"` (keep WAL from the oldest kept physical backup on) or a duration (also
    /// keep WAL archived within it; never less than kept backups need).
    #[serde(default = "defaults::wal_retention")]
    pub wal: String,
    #[serde(
        default = "defaults::incomplete_after",
        with = "humantime_serde_compat"
    )]
    pub incomplete_after: Duration,
    #[serde(default)]
    pub after_backup: bool,
    /// Exports of archived data (`[[archive]] export_after`): kept forever unless this
    /// says otherwise.
    #[serde(default)]
    pub exports: ExportsRetention,
}

/// `[retention.exports]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportsRetention {
    /// Delete exports made longer ago than this (e.g. `"3650d"`); absent: never.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub keep_within: Option<Duration>,
}

/// What `retention.wal` asks for beyond the WAL kept backups need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRetention {
    /// Only what kept physical backups need.
    Backups,
    /// Also everything archived within this long.
    Within(Duration),
}

/// An in-flight backup has no manifest yet; below this age nothing without a manifest is
/// ever called garbage, whatever the config says.
pub const MIN_INCOMPLETE_AFTER: Duration = Duration::from_secs(3600);

impl RetentionRule {
    /// Validate one rule; `key` is where it lives (`retention.physical`).
    fn validate(&self, key: &str) -> Result<(), UserError> {
        let bad = |k: &str, msg: &str| Err(UserError::new(format!("key `{key}.{k}`: {msg}")));
        for (k, v) in [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
        ] {
            if v == Some(0) {
                return bad(k, "must be at least 1 (remove the key to not keep by it)");
            }
        }
        if self.keep_within == Some(Duration::ZERO) {
            return bad(
                "keep_within",
                "must be longer than 0 (remove the key to not keep by age)",
            );
        }
        if *self == RetentionRule::default() {
            return Err(UserError::new(format!(
                "key `{key}`: the rule keeps nothing; set at least one of keep_last, keep_within, keep_daily, keep_weekly, keep_monthly (e.g. keep_within = \"30d\")"
            )));
        }
        Ok(())
    }
}

impl RetentionConfig {
    /// `retention.wal` parsed (validated at load, so this cannot fail afterwards).
    pub fn wal_rule(&self) -> Result<WalRetention, String> {
        if self.wal.trim() == "backups" {
            return Ok(WalRetention::Backups);
        }
        match parse_duration(&self.wal) {
            Ok(d) if d > Duration::ZERO => Ok(WalRetention::Within(d)),
            Ok(_) => Err(
                "must be longer than 0; use \"backups\" to keep only what kept backups need".into(),
            ),
            Err(e) => Err(format!("must be \"backups\" or a duration: {e}")),
        }
    }

    fn validate(&self) -> Result<(), UserError> {
        self.physical.validate("retention.physical")?;
        self.logical.validate("retention.logical")?;
        for (label, rule) in &self.labels {
            if label.trim().is_empty() {
                return Err(UserError::new(
                    "key `retention.labels`: a label name is empty".to_string(),
                ));
            }
            rule.validate(&format!("retention.labels.{label}"))?;
        }
        if let Err(e) = self.wal_rule() {
            return Err(UserError::new(format!("key `retention.wal`: {e}")));
        }
        if self.incomplete_after < MIN_INCOMPLETE_AFTER {
            return Err(UserError::new(format!(
                "key `retention.incomplete_after`: {} is too short: a backup still running has no manifest yet and would be removed; use at least 1h, longer than your longest backup",
                crate::text::config_duration(self.incomplete_after)
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    #[serde(default = "defaults::yes")]
    pub after_backup: bool,
    /// Where scratch clusters live; default: a directory under `backup.state_dir`.
    pub scratch_dir: Option<PathBuf>,
    #[serde(default)]
    pub amcheck: bool,
    /// Longest a verification may run before it is abandoned as failed.
    #[serde(default = "defaults::verify_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PartitionPolicy {
    /// `schema.table` of the partitioned parent.
    pub table: String,
    #[serde(default = "defaults::monthly")]
    pub interval: String,
    #[serde(default = "defaults::premake")]
    pub premake: u32,
    #[serde(default = "defaults::utc")]
    pub timezone: String,
    /// Database holding the table; default `postgres.dbname`.
    pub database: Option<String>,
    /// How long creating one partition may wait for its locks before it is retried.
    #[serde(default = "defaults::lock_timeout", with = "humantime_serde_compat")]
    pub lock_timeout: Duration,
    /// Name of a new month's partition: `{table}` (the parent's name), `{YYYY}`, `{MM}`.
    /// Existing partitions are recognised by their bounds, whatever their names.
    #[serde(default = "defaults::name_format")]
    pub name_format: String,
    /// Create the months missing between the oldest partition and now (otherwise they
    /// are only reported, with the SQL that creates them).
    #[serde(default)]
    pub backfill: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveMode {
    Rows,
    Partitions,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Align {
    Day,
    Month,
}

impl Align {
    /// The `date_trunc` field.
    pub fn field(self) -> &'static str {
        match self {
            Align::Day => "day",
            Align::Month => "month",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnForeignKeys {
    #[default]
    Refuse,
    Ignore,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchivePolicy {
    pub table: String,
    #[serde(default = "defaults::created_at")]
    pub column: String,
    /// A PostgreSQL interval, e.g. `"6 months"`.
    pub older_than: String,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    #[serde(default = "defaults::archive_mode")]
    pub mode: ArchiveMode,
    /// Where `archive_log` lives, and (without `archive_table`) the archive table
    /// `<archive_schema>.<table>` or, in partitions mode, where partitions move.
    #[serde(default = "defaults::archive_schema")]
    pub archive_schema: String,
    /// `schema.name` of the table rows move into (rows mode): an existing table is
    /// checked against the source; a missing one is created like the source.
    pub archive_table: Option<String>,
    /// Round the cutoff `now() - older_than` down to midnight (`"day"`) or the first of
    /// the month (`"month"`) in `timezone`, so every run of a day or month uses the same
    /// cutoff (`"day"` is `CURRENT_DATE - older_than`). Absent: not rounded.
    pub align: Option<Align>,
    /// IANA zone of `align`'s calendar; default the database session's `TimeZone`,
    /// the zone `CURRENT_DATE` uses.
    pub timezone: Option<String>,
    /// A statement run in the transaction that closes each run's `archive_log` row,
    /// naming the run's values as `{table}`, `{rows_moved}`, … (see
    /// docs/partitions-and-archive.md), e.g. an INSERT into the team's audit table.
    pub audit_sql: Option<String>,
    /// A PostgreSQL interval, e.g. `"24 months"`: archived rows (by month) and archived
    /// partitions older than this are exported to the repository, verified, and only
    /// then dropped from the database (see docs/partitions-and-archive.md). Absent:
    /// archived data stays in the database.
    pub export_after: Option<String>,
    #[serde(default)]
    pub on_foreign_keys: OnForeignKeys,
    pub database: Option<String>,
    #[serde(default = "defaults::lock_timeout", with = "humantime_serde_compat")]
    pub lock_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    /// Extra attempts after a failed job run.
    #[serde(default = "defaults::retry_attempts")]
    pub retry_attempts: u32,
    #[serde(default = "defaults::retry_delay", with = "humantime_serde_compat")]
    pub retry_delay: Duration,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback address of the Prometheus endpoint, e.g. `"127.0.0.1:9847"`; absent = off.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    pub webhook_url: Option<String>,
    pub webhook_url_file: Option<PathBuf>,
    /// Alert when the newest verified backup is older than this.
    #[serde(default, with = "humantime_serde_compat::option")]
    pub max_age: Option<Duration>,
    /// The body of each POST: `"json"` (the default) or `"slack"` (an incoming-webhook
    /// payload whose `text` is the message). Checked by `validate`.
    #[serde(default = "defaults::notify_format")]
    pub format: String,
    /// Which outcomes are sent: any of `"failure"`, `"success"`, `"recovery"` (the first
    /// success of a job after one or more failures). Checked by `validate`.
    #[serde(default = "defaults::notify_on")]
    pub on: Vec<String>,
    /// How long a CLI command waits for its notification before exiting, and the limit
    /// of each delivery attempt.
    #[serde(default = "defaults::notify_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl NotifyConfig {
    pub const FORMATS: [&'static str; 2] = ["json", "slack"];
    pub const ON: [&'static str; 3] = ["failure", "success", "recovery"];

    /// Whether `notify.on` lists `what` (one of [`Self::ON`]).
    pub fn wants(&self, what: &str) -> bool {
        self.on.iter().any(|o| o == what)
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook_url: None,
            webhook_url_file: None,
            max_age: None,
            format: defaults::notify_format(),
            on: defaults::notify_on(),
            timeout: defaults::notify_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// WAL files wal-push stores in parallel; a call with a backlog stores the requested
    /// one plus up to `2 × push_concurrency − 1` of the next `.ready` ones (1 = only the
    /// requested file). Default: the CPU count, at most 8.
    pub push_concurrency: Option<usize>,
    /// WAL segments wal-fetch restores in parallel during recovery: the requested one
    /// plus up to `2 × fetch_concurrency − 1` of the following ones, prefetched into
    /// `pg_wal/.backupctl-prefetch/` (1 = only the requested file). Default: the CPU
    /// count, at most 8.
    pub fetch_concurrency: Option<usize>,
    /// Free space, in MiB, prefetching leaves on the file system of `pg_wal`: the
    /// following segments are not fetched ahead when they would leave less. Default 1024.
    pub fetch_reserve_mib: Option<u64>,
}

/// What recovery may still need beside the prefetched segments: room for the WAL it
/// writes itself and for the data files replay extends.
const DEFAULT_FETCH_RESERVE_MIB: u64 = 1024;

fn default_wal_concurrency() -> usize {
    cpus().min(8)
}

/// The CPUs this process may use (cgroup quota included), asked once: the answer costs
/// a few file reads, which matter to a wal-push call.
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    })
}

impl WalConfig {
    pub fn push_concurrency(&self) -> usize {
        self.push_concurrency
            .unwrap_or_else(default_wal_concurrency)
    }

    pub fn fetch_concurrency(&self) -> usize {
        self.fetch_concurrency
            .unwrap_or_else(default_wal_concurrency)
    }

    /// Bytes prefetching leaves free on the file system of `pg_wal`.
    pub fn fetch_reserve_bytes(&self) -> u64 {
        self.fetch_reserve_mib
            .unwrap_or(DEFAULT_FETCH_RESERVE_MIB)
            .saturating_mul(1 << 20)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// `error` | `warn` | `info` | `debug` | `trace`, or a tracing filter directive.
    pub level: Option<String>,
}

/// `[display]`: how times are shown to people (CLI output, notifications).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplayConfig {
    /// IANA time zone for times shown to people; `schedule.timezone` when absent.
    pub timezone: Option<String>,
}

/// `[encryption]`: encryption at rest of every object the repository holds (see
/// docs/security.md). Chosen when a repository is initialised.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// File holding the key: at least 32 random bytes (or a passphrase, see
    /// `passphrase`). A file that is text loses trailing whitespace.
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the key, instead of `key_file`.
    pub key_env: Option<String>,
    /// The key is a passphrase, stretched with PBKDF2-HMAC-SHA256 (600 000 rounds,
    /// salt kept in repo.json), instead of random key material.
    #[serde(default)]
    pub passphrase: bool,
    /// Keys that wrote older objects (a rotation): read, never used to write.
    #[serde(default)]
    pub previous_key_files: Vec<PathBuf>,
}

impl EncryptionConfig {
    pub fn enabled(&self) -> bool {
        self.key_file.is_some() || self.key_env.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    #[serde(default = "defaults::check_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

/// `Default` = what an empty section deserializes to, so the serde attributes are the
/// one place defaults are written.
macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("every key of this section has a default")
            }
        }
    )*};
}

default_from_serde!(
    Config,
    PostgresConfig,
    RepositoryConfig,
    CompressionConfig,
    BackupConfig,
    ScheduleConfig,
    RetentionConfig,
    VerifyConfig,
    DaemonConfig,
    CheckConfig,
    WalConfig
);

mod defaults {
    use super::RetentionRule;
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn max_chain() -> u32 {
        7
    }

    pub fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn notify_format() -> String {
        "json".into()
    }
    pub fn notify_on() -> Vec<String> {
        vec!["failure".into()]
    }
    pub fn notify_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn kinds() -> Vec<super::StoredKind> {
        super::StoredKind::ALL.to_vec()
    }
    pub fn cluster() -> String {
        "main".into()
    }
    pub fn part_size_mib() -> u64 {
        8
    }
    pub fn upload_concurrency() -> usize {
        2
    }
    pub fn state_dir() -> PathBuf {
        PathBuf::from("/var/lib/backupctl/state")
    }
    pub fn archive_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn restore_lease() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn tar_part_mib() -> u64 {
        1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn utc() -> String {
        "UTC".into()
    }
    pub fn retention_rule() -> RetentionRule {
        RetentionRule {
            keep_within: Some(Duration::from_secs(30 * 86400)),
            ..RetentionRule::default()
        }
    }
    /// The runbooks keep a week of WAL even when fewer backups are kept (standbys that
    /// fall behind fetch it with restore_command); kept backups always get all they need.
    pub fn wal_retention() -> String {
        "7d".into()
    }
    pub fn incomplete_after() -> Duration {
        Duration::from_secs(86400)
    }
    pub fn verify_timeout() -> Duration {
        Duration::from_secs(6 * 3600)
    }
    pub fn monthly() -> String {
        "monthly".into()
    }
    pub fn premake() -> u32 {
        3
    }
    pub fn name_format() -> String {
        "{table}_{YYYY}_{MM}".into()
    }
    pub fn created_at() -> String {
        "created_at".into()
    }
    pub fn batch_size() -> u32 {
        5000
    }
    pub fn archive_mode() -> super::ArchiveMode {
        super::ArchiveMode::Rows
    }
    pub fn archive_schema() -> String {
        "archive".into()
    }
    pub fn lock_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(60)
    }
    pub fn retry_attempts() -> u32 {
        2
    }
    pub fn retry_delay() -> Duration {
        Duration::from_secs(300)
    }
    pub fn check_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

/// Durations written as humantime strings (`"30s"`, `"5m"`, `"30d"`, `"1h 30m"`).
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s = String::deserialize(d)?;
            super::super::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// Parse a duration like `"30s"`, `"7d"`, `"1h 30m"`; the error says what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); write a number and a unit, e.g. \"30s\", \"15m\", \"12h\", \"30d\"")
    })
}

impl Config {
    /// The zone times are shown to people in: `display.timezone`, else
    /// `schedule.timezone` (both validated at load), else UTC.
    pub fn display_zone(&self) -> chrono_tz::Tz {
        self.display
            .timezone
            .as_deref()
            .unwrap_or(&self.schedule.timezone)
            .parse()
            .unwrap_or(chrono_tz::UTC)
    }

    /// Load from `path`, or the embedded default when `path` is the default location and
    /// no file exists there.
    pub fn load(path: Option<&Path>) -> Result<Config, UserError> {
        let (text, source) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    UserError::new(format!(
                        "cannot read config file {}: {e}; pass an existing file with --config or BACKUPCTL_CONFIG",
                        p.display()
                    ))
                })?;
                (text, Some(p.to_path_buf()))
            }
            None => {
                let p = Path::new(DEFAULT_PATH);
                match std::fs::read_to_string(p) {
                    Ok(text) => (text, Some(p.to_path_buf())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (EMBEDDED_DEFAULT.to_string(), None)
                    }
                    Err(e) => {
                        return Err(UserError::new(format!(
                            "cannot read config file {}: {e}",
                            p.display()
                        )))
                    }
                }
            }
        };
        let mut cfg = Self::parse(&text, source.as_deref())?;
        cfg.source = source
            .map(|p| std::path::absolute(&p).unwrap_or(p))
            .map(|p| p.canonicalize().unwrap_or(p));
        cfg.resolve_paths();
        cfg.validate()
            .map_err(|e| UserError::new(format!("{}: {e}", cfg.origin())))?;
        Ok(cfg)
    }

    /// Parse TOML text; errors name the file, line and full key.
    pub fn parse(text: &str, source: Option<&Path>) -> Result<Config, UserError> {
        let origin = source
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "embedded default config".into());
        let de = toml::Deserializer::parse(text)
            .map_err(|e| UserError::new(format!("{origin}: {}", one_line_toml_error(&e, text))))?;
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let msg = one_line_toml_error(&inner, text);
            if key.is_empty() || key == "." {
                UserError::new(format!("{origin}: {msg}"))
            } else {
                UserError::new(format!("{origin}: key `{key}`: {msg}"))
            }
        })?;
        if cfg.repositories.0.is_empty() {
            return Err(UserError::new(format!(
                "{origin}: `repository` is empty; add a [repository] table or [[repository]] entries"
            )));
        }
        for (i, r) in cfg.repositories.0.iter_mut().enumerate() {
            if r.name.is_empty() {
                r.name = format!("repo{}", i + 1);
            }
        }
        cfg.repository = cfg.repositories.0[0].clone();
        Ok(cfg)
    }

    /// Act on the repository named `name` only (`--repo`): it becomes
    /// [`Config::repository`] and the only one in [`Config::repositories`].
    pub fn select_repository(&mut self, name: &str) -> Result<(), UserError> {
        let Some(r) = self.repositories.0.iter().find(|r| r.name == name) else {
            let names: Vec<&str> = self
                .repositories
                .0
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            return Err(UserError::new(format!(
                "--repo {name:?}: {} has no repository of that name; it has {}",
                self.origin(),
                names.join(", ")
            )));
        };
        // Named on the command line, it is the one place a write must reach: a failure
        // there fails the command, whatever `required` says for the fan-out.
        let mut r = r.clone();
        r.required = true;
        self.repository = r.clone();
        self.unselected_repositories = self
            .repositories
            .0
            .iter()
            .filter(|o| o.name != name)
            .cloned()
            .collect();
        self.repositories = Repositories(vec![r]);
        self.selected_repository = Some(name.to_string());
        Ok(())
    }

    /// This config acting on `r` (one of [`Config::repositories`]).
    pub fn with_repository(&self, r: &RepositoryConfig) -> Config {
        let mut c = self.clone();
        c.repository = r.clone();
        c
    }

    /// Every repository, required ones first (in config order among themselves);
    /// [`Config::repository`] stands for the entry of its name.
    pub fn all_repositories(&self) -> Vec<RepositoryConfig> {
        let mut all: Vec<RepositoryConfig> = self
            .repositories
            .0
            .iter()
            .map(|r| {
                if r.name == self.repository.name {
                    self.repository.clone()
                } else {
                    r.clone()
                }
            })
            .collect();
        all.sort_by_key(|r| !r.required);
        all
    }

    /// The repositories that receive `kind`, in config order, the required ones first
    /// (the first is where a write goes before it is copied to the others).
    /// [`Config::repository`] stands for the entry of its name.
    pub fn repositories_for(&self, kind: StoredKind) -> Vec<RepositoryConfig> {
        self.all_repositories()
            .into_iter()
            .filter(|r| r.kinds.contains(&kind))
            .collect()
    }

    /// Every configured repository other than [`Config::repository`], whether or not
    /// `--repo` selected one.
    pub fn other_repositories(&self) -> Vec<RepositoryConfig> {
        self.all_repositories()
            .into_iter()
            .chain(self.unselected_repositories.iter().cloned())
            .filter(|r| r.name != self.repository.name)
            .collect()
    }

    /// Several repositories are configured.
    pub fn several_repositories(&self) -> bool {
        self.repositories.0.len() > 1
    }

    /// The directory relative paths are resolved against.
    fn base_dir(&self) -> PathBuf {
        match &self.source {
            Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => std::env::current_dir().unwrap_or_default(),
        }
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir();
        for r in &mut self.repositories.0 {
            if r.kind == RepositoryType::Local && r.path.is_none() {
                r.path = Some(PathBuf::from(DEFAULT_LOCAL_REPOSITORY));
                r.path_defaulted = true;
            }
            for p in [
                r.path.as_mut(),
                r.secret_access_key_file.as_mut(),
                r.ca_file.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p).components().collect();
                }
            }
        }
        if let Some(r) = self
            .repositories
            .0
            .iter()
            .find(|r| r.name == self.repository.name)
        {
            self.repository = r.clone();
        }
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                // components() drops interior `.`: "/etc/./backups" → "/etc/backups".
                *p = base.join(&*p).components().collect();
            }
        };
        // `sslrootcert = "system"` names the OS's roots, not a file next to the config.
        let rootcert = self
            .postgres
            .sslrootcert
            .as_mut()
            .filter(|p| p.as_os_str() != "system");
        for p in [
            rootcert,
            self.postgres.sslcert.as_mut(),
            self.postgres.sslkey.as_mut(),
            self.postgres.password_file.as_mut(),
            self.postgres.bin_dir.as_mut(),
            self.postgres.client_bin_dir.as_mut(),
            self.postgres.pgdata.as_mut(),
            self.verify.scratch_dir.as_mut(),
            self.notify.webhook_url_file.as_mut(),
            self.encryption.key_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        .chain(self.encryption.previous_key_files.iter_mut())
        {
            fix(p);
        }
        fix(&mut self.backup.state_dir);
    }

    /// Cross-field checks serde cannot express. Each error names the key and the fix.
    pub fn validate(&self) -> Result<(), UserError> {
        let bad = |key: &str, msg: String| Err(UserError::new(format!("key `{key}`: {msg}")));
        let e = &self.encryption;
        if e.key_file.is_some() && e.key_env.is_some() {
            return bad(
                "encryption.key_env",
                "key_file and key_env both name the key; keep one".into(),
            );
        }
        if !e.enabled() && (e.passphrase || !e.previous_key_files.is_empty()) {
            return bad(
                "encryption.key_file",
                "passphrase and previous_key_files need the current key: set key_file or key_env"
                    .into(),
            );
        }
        let several = self.several_repositories();
        let mut names = std::collections::BTreeSet::new();
        for r in &self.repositories.0 {
            let prefix = if several {
                format!("repository.{}.", r.name)
            } else {
                "repository.".to_string()
            };
            validate_repository(r, &|key| format!("{prefix}{key}"))?;
            if !valid_repository_name(&r.name) {
                return bad(
                    &format!("{prefix}name"),
                    format!(
                        "{:?} is not a valid repository name; use letters, digits, '-' or '_'",
                        r.name
                    ),
                );
            }
            if !names.insert(r.name.as_str()) {
                return bad(
                    &format!("{prefix}name"),
                    format!(
                        "two repositories are named {:?}; give each its own name",
                        r.name
                    ),
                );
            }
            if r.kinds.is_empty() {
                return bad(
                    &format!("{prefix}kinds"),
                    "is empty: the repository would receive nothing; list what it receives (\"wal\", \"physical\", \"logical\", \"exports\") or remove it".into(),
                );
            }
        }
        for kind in StoredKind::ALL {
            let to = self.repositories_for(kind);
            if !to.is_empty() && !to.iter().any(|r| r.required) {
                return bad(
                    "repository.required",
                    format!(
                        "every repository that receives {} has required = false, so a command could succeed with its data stored nowhere; make one of them required",
                        kind.name()
                    ),
                );
            }
        }
        for (key, c) in std::iter::once(("compression.level".to_string(), self.compression.clone()))
            .chain(DataKind::ALL.into_iter().map(|k| {
                (
                    format!("compression.{}.level", k.name()),
                    self.compression.for_kind(k),
                )
            }))
        {
            let Some(level) = c.level else {
                continue;
            };
            let range = match c.algorithm {
                Algorithm::Zstd => -7..=22,
                Algorithm::Gzip => 0..=9,
                Algorithm::None => 0..=0,
            };
            if !range.contains(&level) {
                return bad(
                    &key,
                    format!(
                        "{level} is not valid for {:?}; use {} to {}",
                        c.algorithm,
                        range.start(),
                        range.end()
                    ),
                );
            }
        }
        for (key, value, one) in [
            ("wal.push_concurrency", self.wal.push_concurrency, "pushes"),
            (
                "wal.fetch_concurrency",
                self.wal.fetch_concurrency,
                "fetches",
            ),
        ] {
            if let Some(n) = value.filter(|n| !(1..=64).contains(n)) {
                return bad(
                    key,
                    format!("{n} is outside 1 to 64; 1 {one} only the file PostgreSQL asks for"),
                );
            }
        }
        if self.backup.workers == Some(0) {
            return bad("backup.workers", "must be at least 1".into());
        }
        if self.backup.part_size_mib == 0 {
            return bad("backup.part_size_mib", "must be at least 1".into());
        }
        if let Some(tz) = &self.display.timezone {
            if tz.parse::<chrono_tz::Tz>().is_err() {
                return bad(
                    "display.timezone",
                    format!(
                        "{tz:?} is not an IANA time zone; use e.g. \"UTC\" or \"Europe/Berlin\""
                    ),
                );
            }
        }
        if self.schedule.timezone.parse::<chrono_tz::Tz>().is_err() {
            return bad(
                "schedule.timezone",
                format!(
                    "{:?} is not an IANA time zone; use e.g. \"UTC\" or \"Europe/Berlin\"",
                    self.schedule.timezone
                ),
            );
        }
        for (name, expr) in self.schedule.entries() {
            if let Err(e) = crate::schedule::parse_cron(expr) {
                return bad(&format!("schedule.{name}"), e);
            }
        }
        self.retention.validate()?;
        for (i, p) in self.partitions.iter().enumerate() {
            let key = format!("partitions[{i}]");
            if p.interval != "monthly" {
                return bad(
                    &format!("{key}.interval"),
                    format!("{:?} is not supported; only \"monthly\" is", p.interval),
                );
            }
            if p.timezone.parse::<chrono_tz::Tz>().is_err() {
                return bad(
                    &format!("{key}.timezone"),
                    format!("{:?} is not an IANA time zone", p.timezone),
                );
            }
            if !valid_qualified_name(&p.table) {
                return bad(
                    &format!("{key}.table"),
                    format!("{:?} must be `schema.table` or `table`", p.table),
                );
            }
            if p.lock_timeout.is_zero() {
                return bad(
                    &format!("{key}.lock_timeout"),
                    "must be more than 0 (0 would wait for locks forever), e.g. \"5s\"".into(),
                );
            }
            if let Err(e) = check_name_format(&p.name_format) {
                return bad(&format!("{key}.name_format"), e);
            }
        }
        for (i, a) in self.archive.iter().enumerate() {
            let key = format!("archive[{i}]");
            if !valid_qualified_name(&a.table) {
                return bad(
                    &format!("{key}.table"),
                    format!("{:?} must be `schema.table` or `table`", a.table),
                );
            }
            if a.batch_size == 0 {
                return bad(&format!("{key}.batch_size"), "must be at least 1".into());
            }
            if a.older_than.trim().is_empty() {
                return bad(
                    &format!("{key}.older_than"),
                    "must be a PostgreSQL interval such as \"6 months\"".into(),
                );
            }
            if a.lock_timeout.is_zero() {
                return bad(
                    &format!("{key}.lock_timeout"),
                    "must be more than 0 (0 would wait for locks forever), e.g. \"5s\"".into(),
                );
            }
            if let Some(t) = &a.archive_table {
                if !valid_qualified_name(t) {
                    return bad(
                        &format!("{key}.archive_table"),
                        format!("{t:?} must be `schema.table` or `table`"),
                    );
                }
                if a.mode != ArchiveMode::Rows {
                    return bad(
                        &format!("{key}.archive_table"),
                        "applies to mode = \"rows\" only; in partitions mode whole partitions move into archive_schema under their own names".into(),
                    );
                }
            }
            if let Some(tz) = &a.timezone {
                if tz.parse::<chrono_tz::Tz>().is_err() {
                    return bad(
                        &format!("{key}.timezone"),
                        format!("{tz:?} is not an IANA time zone; use e.g. \"UTC\" or \"Europe/Berlin\""),
                    );
                }
                if a.align.is_none() {
                    return bad(
                        &format!("{key}.timezone"),
                        "is the calendar of `align` and means nothing without it; set align = \"day\" or \"month\", or remove timezone".into(),
                    );
                }
            }
            if a.export_after
                .as_deref()
                .is_some_and(|e| e.trim().is_empty())
            {
                return bad(
                    &format!("{key}.export_after"),
                    "must be a PostgreSQL interval such as \"24 months\" (or be left out: archived data then stays in the database)".into(),
                );
            }
            if a.archive_schema.trim().is_empty() {
                return bad(
                    &format!("{key}.archive_schema"),
                    "must name a schema, e.g. \"archive\"".into(),
                );
            }
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return bad(
                    "metrics.listen",
                    format!("{listen:?} is not an address:port such as \"127.0.0.1:9847\""),
                );
            }
        }
        if let Some(url) = &self.notify.webhook_url {
            // The value is not echoed: webhook URLs often carry a token.
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.parse::<http::Uri>().is_err() {
                return bad(
                    "notify.webhook_url",
                    "must be an http:// or https:// URL (value not shown: it may hold a token)"
                        .into(),
                );
            }
        }
        if !NotifyConfig::FORMATS.contains(&self.notify.format.as_str()) {
            return bad(
                "notify.format",
                format!("{:?} is not \"json\" or \"slack\"", self.notify.format),
            );
        }
        if let Some(o) = self
            .notify
            .on
            .iter()
            .find(|o| !NotifyConfig::ON.contains(&o.as_str()))
        {
            return bad(
                "notify.on",
                format!("{o:?} is not one of \"failure\", \"success\", \"recovery\""),
            );
        }
        if self.notify.timeout.is_zero() {
            return bad("notify.timeout", "must be more than 0, e.g. \"10s\"".into());
        }
        if self.notify.webhook_url.is_some() && self.notify.webhook_url_file.is_some() {
            return bad(
                "notify.webhook_url_file",
                "set webhook_url or webhook_url_file, not both".into(),
            );
        }
        Ok(())
    }

    /// A short human description of where the config came from.
    pub fn origin(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "embedded default".into(),
        }
    }

    /// The `--config` argument that makes another process (PostgreSQL's archive_command
    /// or restore_command) see this same configuration, or `None` for the embedded default.
    pub fn config_arg(&self) -> Option<&Path> {
        self.source.as_deref()
    }
}

impl ScheduleConfig {
    /// The configured (job, cron expression) pairs.
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            ("physical", &self.physical),
            ("incremental", &self.incremental),
            ("logical", &self.logical),
            ("verify", &self.verify),
            ("retention", &self.retention),
            ("partitions", &self.partitions),
            ("archive", &self.archive),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

/// The checks of one repository's keys; `k` gives a key's full name for messages.
fn validate_repository(r: &RepositoryConfig, k: &dyn Fn(&str) -> String) -> Result<(), UserError> {
    let bad = |key: &str, msg: String| Err(UserError::new(format!("key `{key}`: {msg}")));
    if !valid_cluster_name(&r.cluster) {
        return bad(&k("cluster"),
            format!(
                "{:?} is not a valid cluster name; use letters, digits, '-', '_' or '.' (not first)",
                r.cluster
            ),
        );
    }
    match r.kind {
        RepositoryType::Local => {
            for (key, set) in [
                (k("bucket"), r.bucket.is_some()),
                (k("prefix"), r.prefix.is_some()),
                (k("endpoint"), r.endpoint.is_some()),
                (k("region"), r.region.is_some()),
                (k("storage_class"), r.storage_class.is_some()),
                (k("sse"), r.sse.is_some()),
                (k("ca_file"), r.ca_file.is_some()),
            ] {
                if set {
                    return bad(
                        &key,
                        "only applies to S3 repositories; set repository.type = \"s3\" or remove the key".into(),
                    );
                }
            }
        }
        RepositoryType::S3 => {
            match &r.bucket {
                None => {
                    return bad(
                        &k("bucket"),
                        "required when repository.type = \"s3\"; add bucket = \"my-bucket\"".into(),
                    )
                }
                Some(b) if b.is_empty() || b.contains('/') => {
                    return bad(
                        &k("bucket"),
                        format!("{b:?} is not a bucket name; put folders in repository.prefix"),
                    )
                }
                _ => {}
            }
            if r.path.is_some() {
                return bad(
                    &k("path"),
                    "only applies to local repositories; use repository.prefix for S3".into(),
                );
            }
            if let Some(e) = &r.endpoint {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return bad(
                        &k("endpoint"),
                        format!("{e:?} must start with http:// or https://"),
                    );
                }
            }
            if let Some(sse) = &r.sse {
                if sse != "AES256" && sse != "aws:kms" && sse != "aws:kms:dsse" {
                    return bad(
                        &k("sse"),
                        format!("{sse:?} is not one of \"AES256\", \"aws:kms\", \"aws:kms:dsse\""),
                    );
                }
            }
            if r.secret_access_key_file.is_some() != r.access_key_id.is_some() {
                return bad(&k("access_key_id"),
                    "access_key_id and secret_access_key_file go together; set both or neither (then the AWS credential chain is used)".into(),
                );
            }
            if !(5..=5120).contains(&r.part_size_mib) {
                return bad(
                    &k("part_size_mib"),
                    format!("{} is outside S3's limits; use 5 to 5120", r.part_size_mib),
                );
            }
        }
    }
    if r.upload_concurrency == 0 {
        return bad(&k("upload_concurrency"), "must be at least 1".into());
    }
    Ok(())
}

fn valid_repository_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_cluster_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Placeholders `[[partitions]] name_format` may use.
pub const NAME_FORMAT_PLACEHOLDERS: &[&str] = &["{table}", "{YYYY}", "{MM}"];

/// A name format must name each month differently (`{YYYY}` and `{MM}`), use only known
/// placeholders, and produce a plain name (no schema: partitions live beside the parent).
fn check_name_format(f: &str) -> Result<(), String> {
    for need in ["{YYYY}", "{MM}"] {
        if !f.contains(need) {
            return Err(format!(
                "{f:?} has no {need}; every month needs its own name, e.g. \"{{table}}_{{YYYY}}_{{MM}}\""
            ));
        }
    }
    let mut rest = f.to_string();
    for p in NAME_FORMAT_PLACEHOLDERS {
        rest = rest.replace(p, "");
    }
    if rest.contains('{') || rest.contains('}') {
        return Err(format!(
            "{f:?} has an unknown placeholder; the known ones are {}",
            NAME_FORMAT_PLACEHOLDERS.join(", ")
        ));
    }
    if rest.contains('.') {
        return Err(format!(
            "{f:?} contains a '.'; partitions are created in the parent's schema, give only the name"
        ));
    }
    Ok(())
}

fn valid_qualified_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    (1..=2).contains(&parts.len()) && parts.iter().all(|p| !p.trim().is_empty())
}

/// A toml error on one line: `line L, column C: message`.
fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let cfg = Config::parse(text, None).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn one_table_or_several_entries() {
        let one = parse("[repository]\npath = \"/r\"\n").unwrap();
        assert_eq!(one.repositories.0.len(), 1);
        assert_eq!(one.repository.name, "repo1");
        assert_eq!(one.repository.kinds, StoredKind::ALL.to_vec());
        assert!(one.repository.required);

        let text =
            "[[repository]]\npath = \"/a\"\nkinds = [\"wal\", \"physical\"]\nrequired = false\n\n\
                    [[repository]]\nname = \"s3\"\ntype = \"s3\"\nbucket = \"b\"\n";
        let mut two = parse(text).unwrap();
        assert_eq!(two.repository.name, "repo1");
        // The required repository comes first for writes.
        let wal: Vec<String> = two
            .repositories_for(StoredKind::Wal)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(wal, ["s3", "repo1"]);
        let logical: Vec<String> = two
            .repositories_for(StoredKind::Logical)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(logical, ["s3"]);
        two.select_repository("s3").unwrap();
        assert_eq!(two.repository.bucket.as_deref(), Some("b"));
        assert!(!two.several_repositories());
        let err = parse(text)
            .unwrap()
            .select_repository("nope")
            .unwrap_err()
            .to_string();
        assert!(err.contains("repo1, s3"), "{err}");

        let err = parse("[[repository]]\nbukket = \"b\"\n").unwrap_err();
        assert!(err.contains("bukket"), "{err}");
        let err = parse("[[repository]]\nname = \"a b\"\n").unwrap_err();
        assert!(err.contains("not a valid repository name"), "{err}");
        let err =
            parse("[[repository]]\nname = \"a\"\n[[repository]]\nname = \"b\"\ntype = \"s3\"\n")
                .unwrap_err();
        assert!(err.contains("repository.b.bucket"), "{err}");
    }

    #[test]
    fn section_defaults_match_serde_defaults() {
        let cfg = Config::default();
        assert_eq!(cfg.postgres.connect_timeout, Duration::from_secs(10));
        assert_eq!(cfg.schedule.timezone, "UTC");
        assert_eq!(cfg.repository.cluster, "main");
        assert!(cfg.verify.after_backup);
        assert_eq!(
            cfg.retention.physical.keep_within,
            Some(Duration::from_secs(30 * 86400))
        );
    }

    #[test]
    fn embedded_default_parses_and_validates() {
        let cfg = parse(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(cfg.repository.kind, RepositoryType::Local);
        assert_eq!(cfg.repository.path.as_deref(), Some(Path::new("./backups")));
        assert_eq!(cfg.compression.algorithm, Algorithm::Zstd);
    }

    #[test]
    fn encryption_needs_exactly_one_key_source() {
        let err = parse("[encryption]\nkey_file = \"/k\"\nkey_env = \"K\"\n").unwrap_err();
        assert!(
            err.contains("encryption.key_env") && err.contains("keep one"),
            "{err}"
        );
        let err = parse("[encryption]\npassphrase = true\n").unwrap_err();
        assert!(err.contains("need the current key"), "{err}");
        let err = parse("[encryption]\nprevious_key_files = [\"/old\"]\n").unwrap_err();
        assert!(err.contains("need the current key"), "{err}");
        let cfg = parse("[encryption]\nkey_env = \"K\"\npassphrase = true\n").unwrap();
        assert!(cfg.encryption.enabled() && cfg.encryption.passphrase);
        assert!(!parse("").unwrap().encryption.enabled());
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            parse("[repository]\ntype = \"local\"\npath = \"/x\"\nbukket = \"b\"\n").unwrap_err();
        assert!(err.contains("repository.bukket"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse("[postgres]\nport = \"five\"\n").unwrap_err();
        assert!(err.contains("postgres.port"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn missing_bucket_is_named() {
        let err = parse("[repository]\ntype = \"s3\"\n").unwrap_err();
        assert!(err.contains("repository.bucket"), "{err}");
        assert!(err.contains("add bucket"), "{err}");
    }

    #[test]
    fn s3_keys_on_local_repository_are_refused() {
        let err = parse("[repository]\npath = \"/x\"\nbucket = \"b\"\n").unwrap_err();
        assert!(err.contains("repository.bucket"), "{err}");
    }

    #[test]
    fn bad_cron_is_named() {
        let err =
            parse("[repository]\npath = \"/x\"\n[schedule]\nphysical = \"0 3 * *\"\n").unwrap_err();
        assert!(err.contains("schedule.physical"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = parse("[repository]\npath = \"/x\"\n[backup]\narchive_timeout = \"soon\"\n")
            .unwrap_err();
        assert!(err.contains("backup.archive_timeout"), "{err}");
        assert!(err.contains("30s"), "{err}");
    }

    #[test]
    fn bad_compression_level_is_named() {
        let err =
            parse("[repository]\npath = \"/x\"\n[compression]\nalgorithm = \"gzip\"\nlevel = 12\n")
                .unwrap_err();
        assert!(err.contains("compression.level"), "{err}");
    }

    #[test]
    fn display_timezone_defaults_to_the_schedule_zone_and_is_checked() {
        let base = "[repository]\npath = \"/x\"\n[schedule]\ntimezone = \"Europe/Berlin\"\n";
        assert_eq!(
            parse(base).unwrap().display_zone(),
            chrono_tz::Europe::Berlin
        );
        let cfg = parse(&format!("{base}[display]\ntimezone = \"Asia/Tokyo\"\n")).unwrap();
        assert_eq!(cfg.display_zone(), chrono_tz::Asia::Tokyo);
        let err = parse(&format!("{base}[display]\ntimezone = \"Mars/Olympus\"\n")).unwrap_err();
        assert!(
            err.contains("display.timezone") && err.contains("Mars/Olympus"),
            "{err}"
        );
    }

    #[test]
    fn compression_per_kind_overrides_the_section() {
        let cfg = parse(
            "[repository]\npath = \"/x\"\n[compression]\nlevel = 19\n\
             [compression.wal]\nalgorithm = \"gzip\"\n\
             [compression.logical]\nlevel = 5\nthreads = 2\n",
        )
        .unwrap();
        let c = &cfg.compression;
        // A new algorithm without a level gets that algorithm's default.
        let wal = c.for_kind(DataKind::Wal);
        assert_eq!((wal.algorithm, wal.level), (Algorithm::Gzip, None));
        let logical = c.for_kind(DataKind::Logical);
        assert_eq!(
            (logical.algorithm, logical.level, logical.threads),
            (Algorithm::Zstd, Some(5), 2)
        );
        let physical = c.for_kind(DataKind::Physical);
        assert_eq!(
            (physical.algorithm, physical.level),
            (Algorithm::Zstd, Some(19))
        );
        // A level the kind's algorithm does not have is named with its table.
        let err = parse(
            "[repository]\npath = \"/x\"\n[compression.exports]\nalgorithm = \"gzip\"\nlevel = 12\n",
        )
        .unwrap_err();
        assert!(err.contains("compression.exports.level"), "{err}");
        let err =
            parse("[repository]\npath = \"/x\"\n[compression.wall]\nlevel = 1\n").unwrap_err();
        assert!(err.contains("wall"), "{err}");
    }

    #[test]
    fn notify_format_on_and_timeout_are_checked() {
        let base = "[repository]\npath = \"/x\"\n[notify]\n";
        let c = parse(base).unwrap();
        assert_eq!(c.notify.format, "json");
        assert!(c.notify.wants("failure") && !c.notify.wants("success"));
        assert_eq!(c.notify.timeout, std::time::Duration::from_secs(10));
        let c = parse(&format!(
            "{base}format = \"slack\"\non = [\"success\", \"recovery\"]\ntimeout = \"2s\"\n"
        ))
        .unwrap();
        assert!(c.notify.wants("recovery") && !c.notify.wants("failure"));
        for (toml, key) in [
            ("format = \"xml\"\n", "notify.format"),
            ("on = [\"failure\", \"always\"]\n", "notify.on"),
            ("timeout = \"0s\"\n", "notify.timeout"),
        ] {
            let err = parse(&format!("{base}{toml}")).unwrap_err();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn bad_webhook_url_is_named_but_not_shown() {
        let err = parse(
            "[repository]\npath = \"/x\"\n[notify]\nwebhook_url = \"hooks.example.com/T0KEN\"\n",
        )
        .unwrap_err();
        assert!(err.contains("notify.webhook_url"), "{err}");
        assert!(!err.contains("T0KEN"), "{err}");
        parse("[repository]\npath = \"/x\"\n[notify]\nwebhook_url = \"https://hooks.example.com/T0KEN\"\n")
            .unwrap();
    }

    #[test]
    fn retention_defaults() {
        let r = Config::default().retention;
        for rule in [&r.physical, &r.logical] {
            assert_eq!(rule.keep_within, Some(Duration::from_secs(30 * 86400)));
            assert_eq!(rule.keep_last, None);
        }
        assert_eq!(
            r.wal_rule(),
            Ok(WalRetention::Within(Duration::from_secs(7 * 86400)))
        );
        assert_eq!(r.incomplete_after, Duration::from_secs(86400));
        assert!(!r.after_backup);
        let cfg = parse("[repository]\npath = \"/x\"\n[retention]\nwal = \"backups\"\n").unwrap();
        assert_eq!(cfg.retention.wal_rule(), Ok(WalRetention::Backups));
    }

    #[test]
    fn bad_retention_rules_are_named() {
        let base = "[repository]\npath = \"/x\"\n";
        for (toml, key) in [
            ("[retention.physical]\n", "`retention.physical`"),
            (
                "[retention.logical]\nkeep_last = 0\n",
                "`retention.logical.keep_last`",
            ),
            (
                "[retention.physical]\nkeep_within = \"0s\"\n",
                "`retention.physical.keep_within`",
            ),
            (
                "[retention.labels.pre-migration]\nkeep_weekly = 0\n",
                "`retention.labels.pre-migration.keep_weekly`",
            ),
            ("[retention.labels.x]\n", "`retention.labels.x`"),
            ("[retention]\nwal = \"forever\"\n", "`retention.wal`"),
            ("[retention]\nwal = \"0s\"\n", "`retention.wal`"),
            (
                "[retention]\nincomplete_after = \"10m\"\n",
                "`retention.incomplete_after`",
            ),
            (
                "[retention.physical]\nkeep_lats = 2\n",
                "retention.physical.keep_lats",
            ),
        ] {
            let err = parse(&format!("{base}{toml}")).unwrap_err();
            assert!(err.contains(key), "{toml:?}: {err}");
        }
        let ok = parse(&format!(
            "{base}[retention.physical]\nkeep_last = 2\n[retention.labels.pre-migration]\nkeep_monthly = 12\n"
        ))
        .unwrap();
        assert_eq!(ok.retention.physical.keep_last, Some(2));
        assert_eq!(
            ok.retention.physical.keep_within, None,
            "a given rule replaces the default"
        );
    }

    #[test]
    fn partition_and_archive_lock_timeouts_are_validated() {
        let ok =
            parse("[repository]\npath = \"/x\"\n[[partitions]]\ntable = \"public.t\"\n").unwrap();
        assert_eq!(ok.partitions[0].lock_timeout, Duration::from_secs(5));
        let err = parse(
            "[repository]\npath = \"/x\"\n[[partitions]]\ntable = \"public.t\"\nlock_timeout = \"0s\"\n",
        )
        .unwrap_err();
        assert!(err.contains("partitions[0].lock_timeout"), "{err}");
        let err = parse(
            "[repository]\npath = \"/x\"\n[[archive]]\ntable = \"t\"\nolder_than = \"6 months\"\nlock_timeout = \"0s\"\n",
        )
        .unwrap_err();
        assert!(err.contains("archive[0].lock_timeout"), "{err}");
        let err = parse(
            "[repository]\npath = \"/x\"\n[[archive]]\ntable = \"t\"\nolder_than = \"6 months\"\narchive_schema = \"\"\n",
        )
        .unwrap_err();
        assert!(err.contains("archive[0].archive_schema"), "{err}");
        let err = parse(
            "[repository]\npath = \"/x\"\n[[archive]]\ntable = \"t\"\nolder_than = \"6 months\"\nmode = \"partitions\"\narchive_table = \"a.t\"\n",
        )
        .unwrap_err();
        assert!(err.contains("archive[0].archive_table"), "{err}");
        assert!(err.contains("rows"), "{err}");
        let err = parse(
            "[repository]\npath = \"/x\"\n[[archive]]\ntable = \"t\"\nolder_than = \"6 months\"\narchive_table = \"a.b.c\"\n",
        )
        .unwrap_err();
        assert!(err.contains("archive[0].archive_table"), "{err}");
        let a =
            "[repository]\npath = \"/x\"\n[[archive]]\ntable = \"t\"\nolder_than = \"6 months\"\n";
        let ok = parse(&format!(
            "{a}align = \"day\"\ntimezone = \"Europe/Berlin\"\n"
        ))
        .unwrap();
        assert_eq!(ok.archive[0].align, Some(Align::Day));
        for (extra, want) in [
            ("align = \"week\"\n", "align"),
            (
                "align = \"day\"\ntimezone = \"Mars/Olympus\"\n",
                "archive[0].timezone",
            ),
            ("timezone = \"UTC\"\n", "archive[0].timezone"),
        ] {
            let err = parse(&format!("{a}{extra}")).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
    }

    #[test]
    fn partition_name_formats_are_validated() {
        let base = "[repository]\npath = \"/x\"\n[[partitions]]\ntable = \"public.t\"\n";
        let ok = parse(base).unwrap();
        assert_eq!(ok.partitions[0].name_format, "{table}_{YYYY}_{MM}");
        assert!(!ok.partitions[0].backfill);
        let ok = parse(&format!(
            "{base}name_format = \"usage_stats_{{YYYY}}_{{MM}}\"\nbackfill = true\n"
        ))
        .unwrap();
        assert_eq!(ok.partitions[0].name_format, "usage_stats_{YYYY}_{MM}");
        assert!(ok.partitions[0].backfill);
        // (format, words the error must contain)
        for (f, want) in [
            ("{table}_{YYYY}", "has no {MM}"),
            ("{table}_{MM}", "has no {YYYY}"),
            ("{parent}_{YYYY}_{MM}", "unknown placeholder"),
            ("{table}_{YYYY}_{MM}}", "unknown placeholder"),
            ("other.{table}_{YYYY}_{MM}", "contains a '.'"),
        ] {
            let err = parse(&format!("{base}name_format = \"{f}\"\n")).unwrap_err();
            assert!(err.contains("partitions[0].name_format"), "{f}: {err}");
            assert!(err.contains(want), "{f}: {err}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(
            &file,
            "[repository]\npath = \"repo\"\n[backup]\nstate_dir = \"st\"\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&file)).unwrap();
        let base = dir.path().canonicalize().unwrap();
        assert_eq!(cfg.repository.path.unwrap(), base.join("repo"));
        assert_eq!(cfg.backup.state_dir, base.join("st"));
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/backup.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/backup.toml"));
    }

    #[test]
    fn every_example_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![dir.join("backup.toml")];
        for entry in std::fs::read_dir(dir.join("config")).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                files.push(p);
            }
        }
        assert!(files.len() >= 3, "expected example configs under config/");
        for f in files {
            Config::load(Some(&f)).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }
}
