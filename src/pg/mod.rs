//! PostgreSQL: connections, server binaries and the child processes run from them
//! (pg_dump, pg_restore, psql), dump tables of contents, and WAL/LSN arithmetic.

pub mod bin;
pub mod conn;
pub mod proc;
pub mod toc;
pub mod wal;

/// `"name"`: an SQL identifier quoted for any name (doubling embedded quotes).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'value'`: an SQL string literal (standard_conforming_strings, doubling quotes).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
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
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(conninfo_dbname("x=y 'q' \\"), "dbname='x=y \\'q\\' \\\\'");
    }
}
