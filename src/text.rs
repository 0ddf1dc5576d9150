//! Small text renderings shared by reports, logs and the CLI: sizes for humans,
//! durations as a config writes them, and POSIX shell words (restore commands printed for an operator to paste). One
//! definition each, so the CLI, the daemon and the operations never disagree.

/// `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration the way a config writes it: one number in the largest unit that holds it
/// exactly (`90d`, `36h`, `90m`, `45s`, `1500ms`), so that `keep_within = "90d"` is
/// shown as `90d`, not as months and hours.
pub fn config_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// `s` as one POSIX shell word: unchanged when it holds only characters no shell
/// treats specially, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_a_config_writes_them() {
        use std::time::Duration;
        for (secs, want) in [
            (90 * 86400, "90d"),
            (36 * 3600, "36h"),
            (90 * 60, "90m"),
            (45, "45s"),
            (0, "0s"),
        ] {
            assert_eq!(config_duration(Duration::from_secs(secs)), want);
        }
        assert_eq!(config_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("/var/lib/pg"), "/var/lib/pg");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
