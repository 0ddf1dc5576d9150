//! Partition bounds as the catalog states them: parsing `pg_get_expr(relpartbound, oid)`
//! and comparing ranges.
//!
//! Bounds are read from the catalog, never inferred from partition names. The text form
//! (`FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')`, `DEFAULT`, `MINVALUE`) is parsed
//! here; the literals are then turned into positions on the key's axis by PostgreSQL
//! itself (`catalog::positions`), so no date parsing happens in Rust.

use serde::Serialize;

/// One side of a range bound as written in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEdge {
    MinValue,
    MaxValue,
    /// The literal's text, unquoted.
    Literal(String),
}

/// The shape of `pg_get_expr(relpartbound, oid)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawBound {
    Default,
    /// Single-column range partition.
    Range {
        from: RawEdge,
        to: RawEdge,
    },
    /// LIST, HASH or multi-column bounds: not something a monthly policy manages.
    Other(String),
}

/// Parse the bound expression of one partition.
pub fn parse(expr: &str) -> RawBound {
    let e = expr.trim();
    if e == "DEFAULT" {
        return RawBound::Default;
    }
    let Some(rest) = e.strip_prefix("FOR VALUES FROM (") else {
        return RawBound::Other(e.to_string());
    };
    let parsed = (|| {
        let (from, rest) = edge(rest)?;
        let rest = rest.strip_prefix(") TO (")?;
        let (to, rest) = edge(rest)?;
        (rest == ")").then_some(RawBound::Range { from, to })
    })();
    parsed.unwrap_or_else(|| RawBound::Other(e.to_string()))
}

/// One edge at the start of `s`; returns it and the text after it.
fn edge(s: &str) -> Option<(RawEdge, &str)> {
    if let Some(rest) = s.strip_prefix("MINVALUE") {
        return Some((RawEdge::MinValue, rest));
    }
    if let Some(rest) = s.strip_prefix("MAXVALUE") {
        return Some((RawEdge::MaxValue, rest));
    }
    let mut chars = s.char_indices();
    if chars.next()?.1 != '\'' {
        return None;
    }
    let mut out = String::new();
    let mut it = chars.peekable();
    while let Some((i, c)) = it.next() {
        if c == '\'' {
            if let Some((_, '\'')) = it.peek() {
                out.push('\'');
                it.next();
                continue;
            }
            return Some((RawEdge::Literal(out), &s[i + 1..]));
        }
        out.push(c);
    }
    None
}

/// A position on the key's axis: MINVALUE < every value < MAXVALUE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Pos {
    Min,
    /// Microseconds since 1970-01-01 (`-infinity`/`infinity` are `i64::MIN`/`i64::MAX`).
    At(i64),
    Max,
}

/// `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub from: Pos,
    pub to: Pos,
}

impl Range {
    pub fn overlaps(&self, other: &Range) -> bool {
        self.from < other.to && other.from < self.to
    }

    pub fn contains(&self, other: &Range) -> bool {
        self.from <= other.from && other.to <= self.to
    }

    /// Every value of the range is below `cutoff` (the upper bound is exclusive).
    pub fn entirely_below(&self, cutoff: Pos) -> bool {
        self.to <= cutoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> RawEdge {
        RawEdge::Literal(s.into())
    }

    #[test]
    fn parses_what_pg_get_expr_prints() {
        let cases: &[(&str, RawBound)] = &[
            ("DEFAULT", RawBound::Default),
            (
                "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')",
                RawBound::Range {
                    from: lit("2026-01-01"),
                    to: lit("2026-02-01"),
                },
            ),
            (
                "FOR VALUES FROM ('2026-01-01 00:00:00+01') TO ('2026-02-01 00:00:00+01')",
                RawBound::Range {
                    from: lit("2026-01-01 00:00:00+01"),
                    to: lit("2026-02-01 00:00:00+01"),
                },
            ),
            (
                "FOR VALUES FROM (MINVALUE) TO ('2020-01-01')",
                RawBound::Range {
                    from: RawEdge::MinValue,
                    to: lit("2020-01-01"),
                },
            ),
            (
                "FOR VALUES FROM ('2030-01-01') TO (MAXVALUE)",
                RawBound::Range {
                    from: lit("2030-01-01"),
                    to: RawEdge::MaxValue,
                },
            ),
            (
                "FOR VALUES FROM ('-infinity') TO ('infinity')",
                RawBound::Range {
                    from: lit("-infinity"),
                    to: lit("infinity"),
                },
            ),
            (
                "FOR VALUES FROM ('it''s') TO ('x')",
                RawBound::Range {
                    from: lit("it's"),
                    to: lit("x"),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&parse(text), want, "{text}");
        }
        for other in [
            "FOR VALUES IN (1, 2)",
            "FOR VALUES WITH (modulus 4, remainder 0)",
            "FOR VALUES FROM ('2026-01-01', 1) TO ('2026-02-01', 1)",
            "FOR VALUES FROM ('unterminated) TO ('x')",
        ] {
            assert!(matches!(parse(other), RawBound::Other(_)), "{other}");
        }
    }

    #[test]
    fn range_relations() {
        let r = |a: i64, b: i64| Range {
            from: Pos::At(a),
            to: Pos::At(b),
        };
        let jan = r(0, 31);
        // (a, b, overlaps, a contains b)
        let cases = [
            (jan, jan, true, true),
            (jan, r(31, 59), false, false),
            (r(-10, 0), jan, false, false),
            (r(15, 45), jan, true, false),
            (r(-100, 100), jan, true, true),
            (
                Range {
                    from: Pos::Min,
                    to: Pos::At(10),
                },
                jan,
                true,
                false,
            ),
            (
                Range {
                    from: Pos::Min,
                    to: Pos::Max,
                },
                jan,
                true,
                true,
            ),
        ];
        for (a, b, overlaps, contains) in cases {
            assert_eq!(a.overlaps(&b), overlaps, "{a:?} overlaps {b:?}");
            assert_eq!(b.overlaps(&a), overlaps, "{b:?} overlaps {a:?}");
            assert_eq!(a.contains(&b), contains, "{a:?} contains {b:?}");
        }
        assert!(jan.entirely_below(Pos::At(31)));
        assert!(!jan.entirely_below(Pos::At(30)));
        assert!(!Range {
            from: Pos::At(0),
            to: Pos::Max
        }
        .entirely_below(Pos::At(i64::MAX)));
    }
}
