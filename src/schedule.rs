//! Cron expressions: standard 5-field (minute granularity) or 6-field with seconds.
//!
//! 5-field expressions get a leading `0` seconds field. Validation, the daemon's
//! occurrences (`daemon/scheduler.rs`) and `info`'s "next run" all go through croner with a
//! real IANA zone, so daylight-saving changes are handled (a job in a skipped hour runs at
//! the first valid time after it; a job in a repeated hour runs once).

use chrono::{DateTime, TimeZone};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Validate `expr` and return it in the 6-field form the scheduler takes.
pub fn parse_cron(expr: &str) -> Result<String, String> {
    let fields = expr.split_whitespace().count();
    let normalized = match fields {
        5 => format!("0 {}", expr.trim()),
        6 => expr.trim().to_string(),
        _ => {
            return Err(format!(
                "{expr:?} has {fields} fields; write 5 (minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\") or 6 with leading seconds"
            ))
        }
    };
    parser()
        .parse(&normalized)
        .map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))?;
    Ok(normalized)
}

/// The compiled expression (5 or 6 fields).
pub fn cron(expr: &str) -> Result<Cron, String> {
    let normalized = parse_cron(expr)?;
    parser()
        .parse(&normalized)
        .map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))
}

/// The first time strictly after `after` that `expr` (5 or 6 fields) fires, on a
/// whole second (the fraction of `after` is not carried into the result).
pub fn next_run<Tz: TimeZone>(expr: &str, after: &DateTime<Tz>) -> Option<DateTime<Tz>> {
    use chrono::Timelike;
    let whole = after.with_nanosecond(0)?;
    cron(expr).ok()?.find_next_occurrence(&whole, false).ok()
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Required).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn next_runs_fall_on_whole_seconds() {
        let after: DateTime<Utc> = "2026-12-03T10:15:07.123456789Z".parse().unwrap();
        assert_eq!(
            next_run("0 3 * * *", &after).unwrap().to_rfc3339(),
            "2026-12-04T03:00:00+00:00"
        );
        assert_eq!(
            next_run("*/5 * * * * *", &after).unwrap().to_rfc3339(),
            "2026-12-03T10:15:10+00:00"
        );
    }

    #[test]
    fn five_fields_get_a_seconds_field() {
        assert_eq!(parse_cron("0 3 * * *").unwrap(), "0 0 3 * * *");
        assert_eq!(parse_cron("*/5 * * * * *").unwrap(), "*/5 * * * * *");
    }

    #[test]
    fn bad_expressions_say_why() {
        assert!(parse_cron("0 3 * *").unwrap_err().contains("4 fields"));
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_cron("").is_err());
    }

    #[test]
    fn first_of_month_at_two() {
        let now = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
        let next = next_run("0 2 1 * *", &now).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 2, 1, 2, 0, 0).unwrap());
    }

    #[test]
    fn time_zone_is_respected() {
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let now = tz.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        let next = next_run("0 3 * * *", &now).unwrap();
        // 03:00 Berlin on the day clocks go forward is CEST (UTC+2).
        assert_eq!(
            next.with_timezone(&Utc),
            Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap()
        );
    }
}
