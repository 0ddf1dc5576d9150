//! Recovery targets: what `restore` recovers to, parsed from the command line and
//! rendered into PostgreSQL's `recovery_target_*` settings.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::pg::wal::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Stop before the first transaction that committed after this time.
    Time(DateTime<Utc>),
    Lsn(Lsn),
    /// A restore point (`pg_create_restore_point`).
    Name(String),
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// Replay everything the archive has.
    Latest,
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Time(t) => format!("time {}", format_pg_time(t)),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Name(n) => format!("restore point {n:?}"),
            Target::Immediate => "the end of the backup (immediate)".into(),
            Target::Latest => "the end of the archived WAL (latest)".into(),
        }
    }

    /// `postgresql.auto.conf` lines selecting this target.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        match self {
            Target::Time(t) => vec![("recovery_target_time", format_pg_time(t))],
            Target::Lsn(l) => vec![("recovery_target_lsn", l.to_string())],
            Target::Name(n) => vec![("recovery_target_name", n.clone())],
            Target::Immediate => vec![("recovery_target", "immediate".into())],
            Target::Latest => vec![],
        }
    }
}

/// `2026-11-22 10:00:00.123456+00`: what PostgreSQL's timestamptz input reads exactly.
pub fn format_pg_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// Parse a target time: RFC 3339 (`2026-11-22T10:00:00Z`) or PostgreSQL's
/// `YYYY-MM-DD HH:MM:SS[.ffffff]±TZ` (`+00`, `+0530`, `+05:30`, `Z`, ` UTC`).
/// A time without a zone is refused: guessing the zone is how restores go wrong.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let normalized = if let Some(base) = s.strip_suffix(" UTC").or_else(|| s.strip_suffix('Z')) {
        format!("{}+00", base.trim_end())
    } else {
        s.to_string()
    };
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(&normalized, fmt) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if NaiveDateTime::parse_from_str(s, fmt).is_ok() {
            return Err(format!(
                "target time {s:?} has no time zone; add one, e.g. \"{s}+00\" for UTC or \"{s}+01\""
            ));
        }
    }
    Err(format!(
        "cannot read target time {s:?}; write RFC 3339 (2026-11-22T10:00:00Z) or \
         'YYYY-MM-DD HH:MM:SS+TZ' (2026-11-22 10:00:00+00)"
    ))
}

/// What the server does when it reaches the recovery target
/// (`recovery_target_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

impl TargetAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn accepted_time_formats() {
        let want = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
        for s in [
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00+00:00",
            "2026-11-22T11:00:00+01:00",
            "2026-11-22 10:00:00+00",
            "2026-11-22 15:30:00+0530",
            "2026-11-22 15:30:00+05:30",
            "2026-11-22 02:00:00-08",
            "2026-11-22 10:00:00 UTC",
            "2026-11-22 10:00:00Z",
        ] {
            assert_eq!(parse_time(s).unwrap(), want, "{s}");
        }
        let frac = parse_time("2026-11-22 10:00:00.250+00").unwrap();
        assert_eq!(frac.timestamp_subsec_millis(), 250);
    }

    #[test]
    fn time_without_zone_is_refused_and_says_so() {
        for s in [
            "2026-11-22 10:00:00",
            "2026-11-22T10:00:00",
            "2026-11-22 10:00",
        ] {
            let e = parse_time(s).unwrap_err();
            assert!(e.contains("no time zone"), "{s}: {e}");
        }
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn settings_render_what_postgres_reads() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
        assert_eq!(
            Target::Time(t).settings(),
            vec![(
                "recovery_target_time",
                "2026-11-22 10:00:00.000000+00".to_string()
            )]
        );
        assert_eq!(
            Target::Immediate.settings(),
            vec![("recovery_target", "immediate".to_string())]
        );
        assert!(Target::Latest.settings().is_empty());
    }
}
