//! Quoting for the SQL backupctl generates (partition DDL, archival batches).
//!
//! Names from the config and the catalog never reach SQL text unquoted: identifiers are
//! always double-quoted (what `quote_ident` does for names that need it, applied to every
//! name so no keyword list is needed), literals single-quoted with PostgreSQL's own rules
//! (`quote_literal`: `E'…'` when a backslash is present, so the result is correct whatever
//! `standard_conforming_strings` says). Values that can be bound as parameters are bound
//! instead; these helpers are for DDL and for the statements `--dry-run` prints verbatim.

/// `"name"`, with embedded double quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// `'text'`, or `E'te\\xt'` when the text holds a backslash (as `quote_literal` does).
pub fn literal(text: &str) -> String {
    let doubled = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

/// A comma-separated list of quoted identifiers.
pub fn ident_list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `dbname='…'`: a libpq connection string naming exactly `name`. Programs such as
/// pg_restore treat a `-d` value containing `=` as a connection string, so a plain
/// database name could be misread; this form never is.
pub fn conninfo_dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_names_any_database() {
        assert_eq!(conninfo_dbname("x=y 'q' \\"), "dbname='x=y \\'q\\' \\\\'");
    }

    #[test]
    fn identifiers_are_always_quoted() {
        for (name, want) in [
            ("usage_stats", "\"usage_stats\""),
            ("Order", "\"Order\""),
            ("user", "\"user\""),
            ("we\"ird", "\"we\"\"ird\""),
            ("a.b", "\"a.b\""),
            ("", "\"\""),
        ] {
            assert_eq!(ident(name), want, "{name}");
        }
        assert_eq!(qualified("public", "t"), "\"public\".\"t\"");
        assert_eq!(ident_list(&["a", "B"]), "\"a\", \"B\"");
    }

    #[test]
    fn literals_follow_quote_literal() {
        for (text, want) in [
            ("2026-01-01", "'2026-01-01'"),
            ("it's", "'it''s'"),
            ("a\\b", "E'a\\\\b'"),
            ("'; DROP TABLE t; --", "'''; DROP TABLE t; --'"),
        ] {
            assert_eq!(literal(text), want, "{text}");
        }
    }
}
