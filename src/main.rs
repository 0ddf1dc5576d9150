//! The `backupctl` binary: parse the command line, run the command, map errors to exit
//! codes (see `error.rs`). Everything else lives in the library.

use std::process::ExitCode;

use backupctl::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "failpoints")]
    let _failpoints = match backupctl::failpoint::setup() {
        Ok(scenario) => scenario,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // wal-push/wal-fetch run once per WAL segment: a single-threaded runtime starts faster.
    let rt = match cli.command {
        Command::WalPush(_) | Command::WalFetch(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let result = backupctl::cli::run(cli).await;
        // Let clean-ups of abandoned uploads (S3 multipart aborts) finish.
        backupctl::repo::wait_background(std::time::Duration::from_secs(10)).await;
        // Close PostgreSQL connections with Terminate instead of cutting them.
        backupctl::pg::conn::wait_closed(std::time::Duration::from_secs(5)).await;
        result
    });
    // Don't wait for stray blocking tasks (e.g. a stalled upload abandoned on error).
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, message) = backupctl::error::classify(&e);
            if let Some(m) = message {
                eprintln!("error: {m}");
            }
            ExitCode::from(code.clamp(1, 255) as u8)
        }
    }
}
