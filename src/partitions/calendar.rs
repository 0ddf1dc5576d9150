//! Calendar months in a policy's time zone and the partition bounds they map to.
//!
//! Pure functions of (policy, now): which months a `[[partitions]]` policy wants, and the
//! exact `FOR VALUES FROM (…) TO (…)` literals for the partition key's type. The calendar
//! is the policy's time zone, never the server's or the data's:
//!
//! - `date` and `timestamp` keys hold wall-clock values, so a month is
//!   `['YYYY-MM-01', first of next month)` as written;
//! - `timestamptz` keys hold instants, so a month starts at local midnight of the 1st in
//!   the time zone, written with its UTC offset (`'2026-03-01 00:00:00+01'` …
//!   `'2026-04-01 00:00:00+02'` in Europe/Berlin). The offset makes the literal mean the
//!   same instant whatever the session's `TimeZone` is.
//!
//! Every bound also has a position on the key's axis in microseconds since 1970-01-01
//! (`extract(epoch …)` semantics: wall-clock for `date`/`timestamp`, UTC for
//! `timestamptz`) so planned and existing partitions compare exactly.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// Types a monthly range key (or an archival column) may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Date,
    Timestamp,
    Timestamptz,
}

impl KeyType {
    /// From the type OID (`date` 1082, `timestamp` 1114, `timestamptz` 1184).
    pub fn from_oid(oid: u32) -> Option<KeyType> {
        match oid {
            1082 => Some(KeyType::Date),
            1114 => Some(KeyType::Timestamp),
            1184 => Some(KeyType::Timestamptz),
            _ => None,
        }
    }

    /// The SQL type name used in casts.
    pub fn sql(self) -> &'static str {
        match self {
            KeyType::Date => "date",
            KeyType::Timestamp => "timestamp",
            KeyType::Timestamptz => "timestamptz",
        }
    }
}

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn of(date: NaiveDate) -> Month {
        Month {
            year: date.year(),
            month: date.month(),
        }
    }

    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("valid month")
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// `2026-01`.
    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    /// `2026_01`, the partition name suffix.
    pub fn suffix(self) -> String {
        format!("{:04}_{:02}", self.year, self.month)
    }
}

/// One edge of a month: the SQL literal (without quotes) and its position on the axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub literal: String,
    pub micros: i64,
}

/// `[from, to)` of one month for one key type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthRange {
    pub from: Edge,
    pub to: Edge,
}

/// The month `now` falls in, on the calendar of `tz`.
pub fn current_month(now: DateTime<Utc>, tz: Tz) -> Month {
    Month::of(now.with_timezone(&tz).date_naive())
}

/// The current month and the `premake` months after it.
pub fn wanted_months(now: DateTime<Utc>, tz: Tz, premake: u32) -> Vec<Month> {
    let mut m = current_month(now, tz);
    let mut out = Vec::with_capacity(premake as usize + 1);
    for _ in 0..=premake {
        out.push(m);
        m = m.next();
    }
    out
}

/// The bounds of `month` for a key of type `key` read on the calendar of `tz`.
pub fn month_range(month: Month, key: KeyType, tz: Tz) -> MonthRange {
    MonthRange {
        from: edge(month.first_day(), key, tz),
        to: edge(month.next().first_day(), key, tz),
    }
}

fn edge(day: NaiveDate, key: KeyType, tz: Tz) -> Edge {
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight");
    match key {
        KeyType::Date => Edge {
            literal: day.format("%Y-%m-%d").to_string(),
            micros: midnight.and_utc().timestamp_micros(),
        },
        KeyType::Timestamp => Edge {
            literal: midnight.format("%Y-%m-%d %H:%M:%S").to_string(),
            micros: midnight.and_utc().timestamp_micros(),
        },
        KeyType::Timestamptz => {
            let start = start_of_day(midnight, tz);
            Edge {
                literal: format!(
                    "{}{}",
                    start.naive_local().format("%Y-%m-%d %H:%M:%S"),
                    offset_suffix(start.offset().fix().local_minus_utc())
                ),
                micros: start.timestamp_micros(),
            }
        }
    }
}

/// The first instant of a local day. Where midnight itself does not exist (a DST gap
/// at 00:00, e.g. America/Asuncion), the day starts when the clocks jump; where it
/// exists twice, at the first of the two.
fn start_of_day(midnight: NaiveDateTime, tz: Tz) -> DateTime<Tz> {
    match tz.from_local_datetime(&midnight) {
        LocalResult::Single(t) => t,
        LocalResult::Ambiguous(first, _) => first,
        LocalResult::None => {
            // Gaps are whole minutes and shorter than a day; step to the first valid minute.
            let mut t = midnight;
            for _ in 0..(24 * 60) {
                t += chrono::Duration::minutes(1);
                if let Some(dt) = tz.from_local_datetime(&t).earliest() {
                    return dt;
                }
            }
            unreachable!("time zone {tz} skips a whole day at {midnight}")
        }
    }
}

/// `+01`, `-05`, `+05:30`, `+00:53:28` — the form PostgreSQL prints and parses.
fn offset_suffix(secs: i32) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    let (h, m, s) = (a / 3600, a / 60 % 60, a % 60);
    match (m, s) {
        (0, 0) => format!("{sign}{h:02}"),
        (_, 0) => format!("{sign}{h:02}:{m:02}"),
        _ => format!("{sign}{h:02}:{m:02}:{s:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn tz(name: &str) -> Tz {
        name.parse().unwrap()
    }

    #[test]
    fn wanted_months_follow_the_policy_calendar() {
        // (now, time zone, premake, expected months)
        let cases: &[(&str, &str, u32, &[&str])] = &[
            (
                "2026-01-31T12:00:00Z",
                "UTC",
                3,
                &["2026-01", "2026-02", "2026-03", "2026-04"],
            ),
            ("2026-01-31T23:59:59Z", "UTC", 1, &["2026-01", "2026-02"]),
            // 31 January 23:30 UTC is already 1 February in Berlin.
            (
                "2026-01-31T23:30:00Z",
                "Europe/Berlin",
                1,
                &["2026-02", "2026-03"],
            ),
            // 1 February 03:00 UTC is still 31 January in New York.
            (
                "2026-02-01T03:00:00Z",
                "America/New_York",
                1,
                &["2026-01", "2026-02"],
            ),
            // February of a leap year and of a common year.
            ("2028-02-29T10:00:00Z", "UTC", 1, &["2028-02", "2028-03"]),
            ("2027-02-28T10:00:00Z", "UTC", 1, &["2027-02", "2027-03"]),
            // December rolls over into the next year.
            (
                "2026-12-15T00:00:00Z",
                "UTC",
                3,
                &["2026-12", "2027-01", "2027-02", "2027-03"],
            ),
            ("2026-12-31T23:30:00Z", "Europe/Berlin", 0, &["2027-01"]),
            // premake 0: only the current month.
            ("2026-06-15T00:00:00Z", "UTC", 0, &["2026-06"]),
            // At the DST switch itself.
            (
                "2026-03-29T01:30:00Z",
                "Europe/Berlin",
                1,
                &["2026-03", "2026-04"],
            ),
            (
                "2026-11-01T06:30:00Z",
                "America/New_York",
                1,
                &["2026-11", "2026-12"],
            ),
        ];
        for (now, zone, premake, want) in cases {
            let got: Vec<String> = wanted_months(utc(now), tz(zone), *premake)
                .into_iter()
                .map(Month::label)
                .collect();
            assert_eq!(got, *want, "now {now} in {zone}, premake {premake}");
        }
    }

    #[test]
    fn month_bounds_by_key_type_and_zone() {
        // (month, key type, zone, from literal, to literal, from UTC instant)
        let cases: &[(Month, KeyType, &str, &str, &str)] = &[
            (
                Month {
                    year: 2026,
                    month: 1,
                },
                KeyType::Date,
                "Europe/Berlin",
                "2026-01-01",
                "2026-02-01",
            ),
            (
                Month {
                    year: 2028,
                    month: 2,
                },
                KeyType::Date,
                "UTC",
                "2028-02-01",
                "2028-03-01",
            ),
            (
                Month {
                    year: 2027,
                    month: 2,
                },
                KeyType::Timestamp,
                "UTC",
                "2027-02-01 00:00:00",
                "2027-03-01 00:00:00",
            ),
            (
                Month {
                    year: 2026,
                    month: 12,
                },
                KeyType::Timestamp,
                "America/New_York",
                "2026-12-01 00:00:00",
                "2027-01-01 00:00:00",
            ),
            (
                Month {
                    year: 2026,
                    month: 1,
                },
                KeyType::Timestamptz,
                "UTC",
                "2026-01-01 00:00:00+00",
                "2026-02-01 00:00:00+00",
            ),
            // March in Berlin starts in winter time and ends in summer time.
            (
                Month {
                    year: 2026,
                    month: 3,
                },
                KeyType::Timestamptz,
                "Europe/Berlin",
                "2026-03-01 00:00:00+01",
                "2026-04-01 00:00:00+02",
            ),
            (
                Month {
                    year: 2026,
                    month: 10,
                },
                KeyType::Timestamptz,
                "Europe/Berlin",
                "2026-10-01 00:00:00+02",
                "2026-11-01 00:00:00+01",
            ),
            // New York: DST starts 8 March 2026, ends 1 November 2026 at 02:00 (after midnight).
            (
                Month {
                    year: 2026,
                    month: 3,
                },
                KeyType::Timestamptz,
                "America/New_York",
                "2026-03-01 00:00:00-05",
                "2026-04-01 00:00:00-04",
            ),
            (
                Month {
                    year: 2026,
                    month: 11,
                },
                KeyType::Timestamptz,
                "America/New_York",
                "2026-11-01 00:00:00-04",
                "2026-12-01 00:00:00-05",
            ),
            (
                Month {
                    year: 2026,
                    month: 12,
                },
                KeyType::Timestamptz,
                "Asia/Kolkata",
                "2026-12-01 00:00:00+05:30",
                "2027-01-01 00:00:00+05:30",
            ),
            // Paraguay switched to summer time at midnight on 1 October 2017: the month
            // starts at 01:00 local time, the instant the clocks jumped.
            (
                Month {
                    year: 2017,
                    month: 9,
                },
                KeyType::Timestamptz,
                "America/Asuncion",
                "2017-09-01 00:00:00-04",
                "2017-10-01 01:00:00-03",
            ),
        ];
        for (month, key, zone, from, to) in cases {
            let r = month_range(*month, *key, tz(zone));
            assert_eq!(
                (r.from.literal.as_str(), r.to.literal.as_str()),
                (*from, *to),
                "{month:?} {key:?} {zone}"
            );
            assert!(r.from.micros < r.to.micros);
        }
    }

    #[test]
    fn timestamptz_edges_are_the_local_midnight_instants() {
        let r = month_range(
            Month {
                year: 2026,
                month: 3,
            },
            KeyType::Timestamptz,
            tz("Europe/Berlin"),
        );
        assert_eq!(
            r.from.micros,
            utc("2026-02-28T23:00:00Z").timestamp_micros()
        );
        assert_eq!(r.to.micros, utc("2026-03-31T22:00:00Z").timestamp_micros());
        let r = month_range(
            Month {
                year: 2017,
                month: 10,
            },
            KeyType::Timestamptz,
            tz("America/Asuncion"),
        );
        assert_eq!(
            r.from.micros,
            utc("2017-10-01T04:00:00Z").timestamp_micros()
        );
        // Wall-clock types ignore the zone.
        let d = month_range(
            Month {
                year: 2026,
                month: 3,
            },
            KeyType::Date,
            tz("Europe/Berlin"),
        );
        assert_eq!(
            d.from.micros,
            utc("2026-03-01T00:00:00Z").timestamp_micros()
        );
        assert_eq!(d.to.micros, utc("2026-04-01T00:00:00Z").timestamp_micros());
    }

    #[test]
    fn month_arithmetic() {
        let dec = Month {
            year: 2026,
            month: 12,
        };
        assert_eq!(
            dec.next(),
            Month {
                year: 2027,
                month: 1
            }
        );
        assert_eq!(dec.suffix(), "2026_12");
        assert_eq!(
            Month {
                year: 2026,
                month: 2
            }
            .next()
            .first_day(),
            NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()
        );
        assert_eq!(offset_suffix(-12600), "-03:30");
        assert_eq!(offset_suffix(3208), "+00:53:28");
        assert_eq!(KeyType::from_oid(1184), Some(KeyType::Timestamptz));
        assert_eq!(KeyType::from_oid(23), None);
    }
}
