//! tracing setup: human-readable on stderr (colours on a TTY) or JSON lines
//! (`log.format = "json"`, for the journal and log shippers).
//!
//! Level: `BACKUPCTL_LOG` (a tracing filter) wins; else `-v`/`-q`; else `log.level`;
//! else `info` (`warn` for wal-push/wal-fetch, whose stderr lands in PostgreSQL's log
//! once per segment).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(cfg: &LogConfig, verbose: u8, quiet: u8, quiet_by_default: bool) {
    let level = match (verbose, quiet) {
        (0, 0) => cfg
            .level
            .clone()
            .unwrap_or_else(|| if quiet_by_default { "warn" } else { "info" }.into()),
        (1, _) => "debug".into(),
        (v, _) if v >= 2 => "trace".into(),
        (_, 1) => "warn".into(),
        _ => "error".into(),
    };
    // The AWS SDK warns once per credential source it probes (instance metadata included)
    // and per retry; what matters reaches the user as backupctl's own one-line error, so
    // its messages show only with -v.
    let sdk = if verbose > 0 { "warn" } else { "error" };
    let filter = EnvFilter::try_from_env("BACKUPCTL_LOG").unwrap_or_else(|_| {
        // Our own crate at the chosen level; chatty dependencies quieter.
        EnvFilter::new(format!(
            "warn,backupctl={level},aws_smithy_runtime={sdk},aws_config={sdk},aws_runtime={sdk},aws_sdk_s3={sdk},tokio_postgres=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
    };
}
