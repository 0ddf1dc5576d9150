//! The archiving part of `backupctl check`: are `wal_level`, `archive_mode`,
//! `archive_library` and `archive_command` right for THIS binary and THIS config, and does
//! a segment PostgreSQL closes now actually reach the repository?
//!
//! The settings are judged by a pure function of (settings, this binary, this config);
//! the end-to-end probe forces `pg_switch_wal()` and waits up to `check.timeout` for the
//! segment to appear in the repository — the only proof that archiving works.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, RepositoryType};
use crate::ops::check::Report;
use crate::repo::{layout, Repository};

/// What `archive_command` runs, as far as a shell-like split tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveCommand {
    /// The backupctl program as written (absolute path or a name looked up in PATH).
    pub program: String,
    pub config: Option<String>,
    pub wal_push: bool,
    pub percent_p: bool,
    /// Shell operators (`&&`, `;`, `|`) make the command more than one program.
    pub compound: bool,
}

/// Split like `/bin/sh` would for simple commands (quotes and backslashes), and find the
/// backupctl invocation: the program word of a simple command (after `VAR=value`
/// assignments) that is named `backupctl` or for which `is_backupctl` says yes (this
/// binary under another name: a versioned copy, a symlink). Of several, the one running
/// `wal-push %p` is taken. `None` when no simple command runs backupctl.
pub fn parse_archive_command(
    cmd: &str,
    is_backupctl: &dyn Fn(&str) -> bool,
) -> Option<ArchiveCommand> {
    let words = shell_words(cmd);
    let is_op = |w: &String| matches!(w.as_str(), "&&" | "||" | ";" | "|" | "&");
    let compound = words.iter().any(is_op) || cmd.contains("$(") || cmd.contains('`');
    let candidates: Vec<ArchiveCommand> = words
        .split(is_op)
        .filter_map(|simple| {
            let pos = simple.iter().position(|w| !is_assignment(w))?;
            let program = &simple[pos];
            let named = Path::new(program)
                .file_name()
                .is_some_and(|n| n == "backupctl");
            (named || is_backupctl(program)).then(|| invocation(program, &simple[pos + 1..]))
        })
        .map(|mut c| {
            c.compound = compound;
            c
        })
        .collect();
    let best = candidates
        .iter()
        .position(|c| c.wal_push && c.percent_p)
        .unwrap_or(0);
    candidates.into_iter().nth(best)
}

/// `NAME=value` before a program: an environment assignment, not the program.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn invocation(program: &str, rest: &[String]) -> ArchiveCommand {
    let mut config = None;
    let mut i = 0;
    while i < rest.len() {
        if let Some(v) = rest[i].strip_prefix("--config=") {
            config = Some(v.to_string());
        } else if rest[i] == "--config" {
            config = rest.get(i + 1).cloned();
            i += 1;
        }
        i += 1;
    }
    ArchiveCommand {
        program: program.to_string(),
        config,
        wal_push: rest.iter().any(|w| w == "wal-push"),
        percent_p: rest.iter().any(|w| w == "%p"),
        compound: false,
    }
}

/// Whether `program` (absolute, or looked up in this process's PATH) is the file `exe`,
/// comparing canonical paths (symlinks resolved) and, for hard links, the inode.
fn is_this_binary(program: &str, exe: Option<&Path>) -> bool {
    let Some(exe) = exe else { return false };
    let path = if Path::new(program).is_absolute() {
        Some(PathBuf::from(program))
    } else if program.contains('/') {
        None // relative to PostgreSQL's data directory: not knowable here
    } else {
        find_in_path(program)
    };
    let Some(path) = path else { return false };
    match (path.canonicalize(), exe.canonicalize()) {
        (Ok(a), Ok(b)) => a == b || same_file(&a, &b),
        _ => false,
    }
}

fn shell_words(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        _ => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ';' | '|' | '&' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                let mut op = c.to_string();
                if chars.peek() == Some(&c) && c != ';' {
                    op.push(chars.next().expect("peeked"));
                }
                out.push(op);
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Where a config's repository is, comparable between two configs without opening either.
pub fn repository_location(cfg: &Config) -> String {
    let r = &cfg.repository;
    match r.kind {
        RepositoryType::Local => format!(
            "{}/{}",
            r.path.as_deref().unwrap_or(Path::new("")).display(),
            r.cluster
        ),
        RepositoryType::S3 => format!(
            "s3://{}/{}{} at {}",
            r.bucket.as_deref().unwrap_or(""),
            r.prefix.as_deref().unwrap_or(""),
            r.cluster,
            r.endpoint.as_deref().unwrap_or("AWS")
        ),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// Judge the archiving settings; add one line per setting.
pub fn judge_settings(
    r: &mut Report,
    cfg: &Config,
    wal_level: &str,
    archive_mode: &str,
    archive_library: &str,
    archive_command: &str,
) {
    let exe = std::env::current_exe().ok();
    let exe_shown = exe
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/usr/bin/backupctl".into());
    let config_arg = cfg
        .config_arg()
        .map(|p| format!(" --config {}", p.display()))
        .unwrap_or_default();
    let want = format!("{exe_shown}{config_arg} wal-push %p");
    let set_command = format!(
        "ALTER SYSTEM SET archive_command = '{}'; SELECT pg_reload_conf();",
        want.replace('\'', "''")
    );

    if wal_level == "minimal" {
        r.fail(
            "wal_level",
            "minimal: WAL cannot be archived",
            "ALTER SYSTEM SET wal_level = 'replica'; then restart PostgreSQL",
        );
    } else {
        r.ok("wal_level", wal_level);
    }
    if archive_mode == "off" {
        r.fail(
            "archive_mode",
            "off: no WAL is archived, point-in-time recovery is impossible",
            "ALTER SYSTEM SET archive_mode = 'on'; then restart PostgreSQL",
        );
    } else {
        r.ok("archive_mode", archive_mode);
    }
    if !archive_library.is_empty() {
        r.fail(
            "archive_library",
            format!("{archive_library:?} is set: PostgreSQL uses it instead of archive_command"),
            "ALTER SYSTEM RESET archive_library; SELECT pg_reload_conf();",
        );
    }
    // A fix that sets the value already set helps nobody: say what to look at instead.
    let already_set = want == archive_command.trim();
    let set_command = if already_set {
        format!(
            "archive_command already runs {exe_shown}; fix the problem named here (the file, the config, or the other commands in it)"
        )
    } else {
        set_command
    };
    let is_ours = |program: &str| is_this_binary(program, exe.as_deref());
    let Some(cmd) = parse_archive_command(archive_command, &is_ours) else {
        r.fail(
            "archive_command",
            format!(
                "{archive_command:?} does not run backupctl (neither a program named backupctl nor this binary, {exe_shown})"
            ),
            set_command,
        );
        return;
    };
    if !cmd.wal_push || !cmd.percent_p {
        r.fail(
            "archive_command",
            format!("{archive_command:?} does not run `wal-push %p`"),
            set_command,
        );
        return;
    }
    // The program: this very binary, ideally.
    let program = Path::new(&cmd.program);
    let resolved = if program.is_absolute() {
        Some(program.to_path_buf()).filter(|p| p.is_file())
    } else {
        find_in_path(&cmd.program)
    };
    let mut problems: Vec<(bool, String)> = vec![]; // (is_failure, message)
    match (&resolved, &exe) {
        (None, _) if program.is_absolute() => {
            problems.push((true, format!("{} does not exist", program.display())))
        }
        (None, _) => problems.push((
            false,
            format!(
                "{:?} is looked up in PostgreSQL's PATH, which this check cannot see",
                cmd.program
            ),
        )),
        (Some(p), Some(me)) if !same_file(p, me) => problems.push((
            false,
            format!(
                "runs {}, a different file than this backupctl ({}); both must be the same version",
                p.display(),
                me.display()
            ),
        )),
        _ => {}
    }
    if !program.is_absolute() && resolved.is_some() {
        problems.push((
            false,
            format!("{:?} depends on PostgreSQL's PATH", cmd.program),
        ));
    }
    // The config: the same file, or at least the same repository.
    match (cfg.config_arg(), cmd.config.as_deref()) {
        (Some(mine), Some(theirs)) => {
            let theirs_path = Path::new(theirs);
            if !same_file(mine, theirs_path) {
                match Config::load(Some(theirs_path)) {
                    Ok(other) if repository_location(&other) == repository_location(cfg) => {
                        problems.push((
                            false,
                            format!("uses another config file ({theirs}) with the same repository"),
                        ))
                    }
                    Ok(other) => problems.push((
                        true,
                        format!(
                            "archives into {} (config {theirs}), not into this config's repository {}",
                            repository_location(&other),
                            repository_location(cfg)
                        ),
                    )),
                    Err(e) => problems.push((
                        false,
                        format!("uses config {theirs}, which this check cannot read: {e}"),
                    )),
                }
            }
        }
        (Some(mine), None) if mine != Path::new(crate::config::DEFAULT_PATH) => problems.push((
            true,
            format!(
                "has no --config: it reads {} (or the embedded default), not {}",
                crate::config::DEFAULT_PATH,
                mine.display()
            ),
        )),
        _ => {}
    }
    let compound_only = cmd.compound && problems.is_empty();
    if cmd.compound {
        problems.push((
            false,
            "is a compound shell command: its backupctl wal-push part was checked; PostgreSQL \
             retries the whole command when any part fails, so the other parts must not fail \
             (and must succeed when run again for the same file)"
                .into(),
        ));
    }
    if problems.is_empty() {
        r.ok("archive_command", archive_command);
    } else {
        let failed = problems.iter().any(|(f, _)| *f);
        let detail = format!(
            "{archive_command:?} {}",
            problems
                .into_iter()
                .map(|(_, m)| m)
                .collect::<Vec<_>>()
                .join("; ")
        );
        if failed {
            r.fail("archive_command", detail, set_command);
        } else if compound_only {
            // The backupctl part is right: replacing the command would drop the rest.
            r.warn(
                "archive_command",
                detail,
                "make sure the other commands succeed, also when repeated for a file they already handled",
            );
        } else {
            r.warn("archive_command", detail, set_command);
        }
    }
}

/// Force a WAL switch and wait for the closed segment to reach the repository.
pub async fn probe(
    r: &mut Report,
    client: &tokio_postgres::Client,
    repo: &Arc<dyn Repository>,
    timeout: Duration,
) {
    const CHECK: &str = "wal archiving";
    // A restore point writes a WAL record, so the switch always closes a segment with
    // something in it (pg_switch_wal does nothing on an idle segment).
    let _ = client
        .query_one("SELECT pg_create_restore_point('backupctl check')", &[])
        .await;
    let segment: String = match client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(e) => {
            r.fail(
                CHECK,
                format!("pg_switch_wal(): {:#}", anyhow::Error::from(e)),
                "connect as a superuser or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO <user>",
            );
            return;
        }
    };
    let base = layout::wal_key_base(&segment).expect("PostgreSQL names segments");
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let found = match repo.list(&base).await {
            Ok(objs) => objs
                .iter()
                .any(|o| layout::parse_wal_key(&o.key).is_some_and(|(n, _)| n == segment)),
            Err(e) => {
                r.fail(
                    CHECK,
                    format!("list {base}: {e}"),
                    "fix the repository access above",
                );
                return;
            }
        };
        if found {
            r.ok(
                CHECK,
                format!(
                    "segment {segment} (closed by pg_switch_wal) reached the repository in {:.1}s",
                    started.elapsed().as_secs_f64()
                ),
            );
            return;
        }
        if started.elapsed() >= timeout {
            let archiver = client
                .query_one(
                    "SELECT failed_count, coalesce(last_failed_wal, '-'), coalesce(last_failed_time::text, '-'), \
                            coalesce(last_archived_wal, '-') FROM pg_stat_archiver",
                    &[],
                )
                .await
                .map(|row| {
                    format!(
                        "; pg_stat_archiver: last archived {}, {} failures, last failed {} at {}",
                        row.get::<_, String>(3),
                        row.get::<_, i64>(0),
                        row.get::<_, String>(1),
                        row.get::<_, String>(2)
                    )
                })
                .unwrap_or_default();
            r.fail(
                CHECK,
                format!(
                    "segment {segment} did not reach the repository within {} (check.timeout){archiver}",
                    crate::text::config_duration(timeout)
                ),
                "read the archive_command errors in the PostgreSQL log; run the archive_command by hand as the postgres user",
            );
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_commands_are_understood() {
        // (command, program, config, wal-push and %p, compound)
        type Want<'a> = Option<(&'a str, Option<&'a str>, bool, bool)>;
        let cases: &[(&str, Want)] = &[
            (
                "/usr/bin/backupctl --config /etc/backupctl/backup.toml wal-push %p",
                Some((
                    "/usr/bin/backupctl",
                    Some("/etc/backupctl/backup.toml"),
                    true,
                    false,
                )),
            ),
            (
                "'/opt/my tools/backupctl' --config='/etc/b c.toml' wal-push \"%p\"",
                Some((
                    "/opt/my tools/backupctl",
                    Some("/etc/b c.toml"),
                    true,
                    false,
                )),
            ),
            (
                "BACKUPCTL_LOG=warn backupctl wal-push %p",
                Some(("backupctl", None, true, false)),
            ),
            (
                "test ! -f /x/%f && /usr/bin/backupctl wal-push %p",
                Some(("/usr/bin/backupctl", None, true, true)),
            ),
            (
                "/usr/bin/backupctl wal-fetch %f %p",
                Some(("/usr/bin/backupctl", None, false, false)),
            ),
            ("cp %p /mnt/archive/%f", None),
            ("/usr/bin/backupctl-old wal-push %p", None),
        ];
        for (cmd, want) in cases {
            let got = parse_archive_command(cmd, &|_| false);
            match (want, got) {
                (None, None) => {}
                (Some((program, config, push, compound)), Some(got)) => {
                    assert_eq!(got.program, *program, "{cmd}");
                    assert_eq!(got.config.as_deref(), *config, "{cmd}");
                    assert_eq!(got.wal_push && got.percent_p, *push, "{cmd}");
                    assert_eq!(got.compound, *compound, "{cmd}");
                }
                (w, g) => panic!("{cmd}: want {w:?}, got {g:?}"),
            }
        }
    }

    fn lines(cfg: &Config, cmd: &str, library: &str) -> Vec<(String, String)> {
        let mut r = Report::default();
        judge_settings(&mut r, cfg, "replica", "on", library, cmd);
        r.lines
            .iter()
            .map(|l| (format!("{:?} {}", l.status, l.check), l.detail.clone()))
            .collect()
    }

    #[test]
    fn settings_are_judged_against_this_binary_and_config() {
        let d = tempfile::tempdir().unwrap();
        let mine = d.path().join("mine.toml");
        std::fs::write(&mine, "[repository]\npath = \"/r\"\n").unwrap();
        let same_repo = d.path().join("same.toml");
        std::fs::write(&same_repo, "[repository]\npath = \"/r\"\n").unwrap();
        let other_repo = d.path().join("other.toml");
        std::fs::write(&other_repo, "[repository]\npath = \"/elsewhere\"\n").unwrap();
        let cfg = Config::load(Some(&mine)).unwrap();
        let me = std::env::current_exe().unwrap();
        // The test binary plays "this backupctl": hard-link it under the right name.
        let bin = d.path().join("backupctl");
        std::fs::hard_link(&me, &bin).unwrap();
        let cmd = |config: &Path| {
            format!(
                "{} --config {} wal-push %p",
                bin.display(),
                config.display()
            )
        };

        let status = |ls: &[(String, String)]| {
            ls.iter()
                .find(|(s, _)| s.ends_with("archive_command"))
                .map(|(s, d)| format!("{s}: {d}"))
                .unwrap()
        };
        assert!(status(&lines(&cfg, &cmd(&mine), "")).starts_with("Ok"));
        let same = status(&lines(&cfg, &cmd(&same_repo), ""));
        assert!(
            same.starts_with("Warn") && same.contains("same repository"),
            "{same}"
        );
        let other = status(&lines(&cfg, &cmd(&other_repo), ""));
        assert!(
            other.starts_with("Fail") && other.contains("/elsewhere/main"),
            "{other}"
        );
        let missing = status(&lines(&cfg, "/nonexistent/backupctl wal-push %p", ""));
        assert!(
            missing.starts_with("Fail") && missing.contains("does not exist"),
            "{missing}"
        );
        let library = lines(&cfg, &cmd(&mine), "basic_archive");
        assert!(
            library.iter().any(|(s, _)| s == "Fail archive_library"),
            "{library:?}"
        );
        let not_ours = status(&lines(&cfg, "cp %p /mnt/%f", ""));
        assert!(not_ours.starts_with("Fail"), "{not_ours}");

        // This binary under another name: a versioned copy, or a symlink to it.
        let versioned = d.path().join("backupctl-1.2");
        std::fs::hard_link(&me, &versioned).unwrap();
        let link = d.path().join("bk");
        std::os::unix::fs::symlink(&me, &link).unwrap();
        for program in [&versioned, &link] {
            let c = format!(
                "{} --config {} wal-push %p",
                program.display(),
                mine.display()
            );
            let got = status(&lines(&cfg, &c, ""));
            assert!(got.starts_with("Ok"), "{got}");
        }
        // A compound command with a correct wal-push works: a warning about the rest.
        let compound = format!("{} && pgbackrest --stanza=x archive-push %p", cmd(&mine));
        let got = status(&lines(&cfg, &compound, ""));
        assert!(
            got.starts_with("Warn") && got.contains("must not fail"),
            "{got}"
        );
    }

    #[test]
    fn the_fix_is_never_the_current_value() {
        let d = tempfile::tempdir().unwrap();
        let mine = d.path().join("mine.toml");
        std::fs::write(&mine, "[repository]\npath = \"/r\"\n").unwrap();
        let cfg = Config::load(Some(&mine)).unwrap();
        let me = std::env::current_exe().unwrap();
        for current in [
            format!("{} --config {} wal-push %p", me.display(), mine.display()),
            format!(
                "{} --config {} wal-push %p && false",
                me.display(),
                mine.display()
            ),
            "cp %p /mnt/%f".to_string(),
            format!("{} wal-push %p", me.display()),
        ] {
            let mut r = Report::default();
            judge_settings(&mut r, &cfg, "replica", "on", "", &current);
            for l in &r.lines {
                if let Some(fix) = &l.fix {
                    assert!(
                        !fix.contains(&format!("'{}'", current.replace('\'', "''"))),
                        "{current}: {fix}"
                    );
                }
            }
        }
    }
}
