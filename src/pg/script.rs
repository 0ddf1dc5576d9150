//! SQL scripts read back from the repository (the `pg_dumpall --globals-only` output of
//! a logical backup), split into statements to run over the protocol.
//!
//! The repository is not trusted to hold only what backupctl wrote: whoever can write
//! the bucket could put psql meta-commands (`\!` runs a shell command, `\o |cmd`, `\copy
//! … program`, backquotes in arguments) into the script. So the script is never given to
//! psql. It is lexed here the way psql's own lexer does (quoted literals, `E''` strings,
//! quoted identifiers, dollar quotes, nested comments) and refused as a whole — before
//! anything runs — if a backslash appears outside a quoted literal or comment, except
//! for the lines pg_dumpall itself writes: `\connect NAME` (full dumps) and
//! `\restrict KEY` / `\unrestrict KEY` (15.14 and later). Those are skipped: roles and
//! tablespaces are cluster-wide, so the database a statement runs in does not matter,
//! and `\restrict` only guards psql, which is not used.
//!
//! A backslash inside a plain `'…'` literal is refused too: pg_dumpall writes every
//! literal holding a backslash as `E'…'`, and a plain one means something different
//! under `standard_conforming_strings = off`, so where it ends would be a guess.

use std::fmt;

/// One statement and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub line: usize,
    pub sql: String,
}

/// Why a script was refused: the line (1-based) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    /// `'…'` (`escapes: false`) or `E'…'` (`escapes: true`).
    Literal {
        escapes: bool,
    },
    Ident,
    /// Inside `$tag$…$tag$`; the tag is kept separately.
    Dollar,
    LineComment,
    BlockComment(u32),
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

/// The meta-command lines pg_dumpall writes, exactly: the command, one argument without
/// quotes, backquotes or backslashes (psql would expand backquotes by running them).
fn allowed_meta(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let (Some(cmd), Some(arg), None) = (words.next(), words.next(), words.next()) else {
        return false;
    };
    matches!(cmd, "\\connect" | "\\restrict" | "\\unrestrict")
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Shorten a line for an error message (it may be long, and it is hostile).
fn excerpt(line: &str) -> String {
    let line = line.trim();
    let mut out: String = line.chars().take(80).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

/// Split `script` into statements, or refuse it (see the module docs). Statements that
/// hold only comments are dropped; allowed meta-command lines are skipped.
pub fn split(script: &str) -> Result<Vec<Statement>, Refused> {
    let lines: Vec<&str> = script.split('\n').collect();
    let chars: Vec<char> = script.chars().collect();
    let mut out = Vec::new();
    let mut state = State::Normal;
    let mut dollar_tag = String::new();
    let mut cur = String::new();
    // Whether `cur` holds anything but whitespace and comments.
    let mut has_sql = false;
    let mut start_line = 1;
    let mut line = 1;
    let mut parens = 0i64;
    let mut prev: Option<char> = None;
    let mut i = 0;
    let refuse = |line: usize, why: &str| Refused {
        line,
        reason: format!(
            "{why}: {}",
            excerpt(lines.get(line - 1).copied().unwrap_or(""))
        ),
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let mut take = 1;
        let was_comment = matches!(state, State::LineComment | State::BlockComment(_));
        match state {
            State::Normal => match c {
                '\\' => {
                    let text = lines.get(line - 1).copied().unwrap_or("");
                    let at_line_start = text.trim_start().starts_with('\\');
                    if !has_sql && at_line_start && allowed_meta(text) {
                        // Skip the rest of the line (the meta-command and its argument).
                        while i < chars.len() && chars[i] != '\n' {
                            i += 1;
                        }
                        prev = None;
                        continue;
                    }
                    return Err(refuse(
                        line,
                        "a psql meta-command (a backslash outside a quoted literal); pg_dumpall writes none but \\connect, \\restrict and \\unrestrict on lines of their own",
                    ));
                }
                '\'' => {
                    let escapes =
                        matches!(prev, Some('e' | 'E')) && !chars[..i.saturating_sub(1)]
                            .last()
                            .is_some_and(|&p| ident_char(p));
                    state = State::Literal { escapes };
                }
                '"' => state = State::Ident,
                '-' if next == Some('-') => {
                    state = State::LineComment;
                    take = 2;
                }
                '/' if next == Some('*') => {
                    state = State::BlockComment(1);
                    take = 2;
                }
                '$' if !prev.is_some_and(ident_char) => {
                    // `$tag$` (the tag may be empty); `$1` is a parameter, not a quote.
                    let tag: String = chars[i + 1..]
                        .iter()
                        .take_while(|&&c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii())
                        .collect();
                    let closes = chars.get(i + 1 + tag.chars().count()) == Some(&'$');
                    if closes && !tag.starts_with(|c: char| c.is_ascii_digit()) {
                        take = tag.chars().count() + 2;
                        dollar_tag = tag;
                        state = State::Dollar;
                    }
                }
                '(' => parens += 1,
                ')' => parens -= 1,
                ';' if parens <= 0 => {
                    if has_sql {
                        cur.push(';');
                        out.push(Statement {
                            line: start_line,
                            sql: std::mem::take(&mut cur),
                        });
                    }
                    has_sql = false;
                    parens = 0;
                    prev = Some(';');
                    i += 1;
                    continue;
                }
                _ => {}
            },
            State::Literal { escapes } => match c {
                '\\' if escapes => take = 2,
                '\\' => {
                    return Err(refuse(
                        line,
                        "a backslash in a plain '…' literal (pg_dumpall writes such literals as E'…'; where this one ends depends on standard_conforming_strings)",
                    ))
                }
                '\'' if next == Some('\'') => take = 2,
                '\'' => state = State::Normal,
                _ => {}
            },
            State::Ident => match c {
                '"' if next == Some('"') => take = 2,
                '"' => state = State::Normal,
                _ => {}
            },
            State::Dollar => {
                if c == '$' {
                    let tag_len = dollar_tag.chars().count();
                    let end = i + 1 + tag_len;
                    if chars.get(end) == Some(&'$')
                        && chars[i + 1..end].iter().copied().eq(dollar_tag.chars())
                    {
                        take = tag_len + 2;
                        state = State::Normal;
                    }
                }
            }
            State::LineComment => {
                if c == '\n' {
                    state = State::Normal;
                }
            }
            State::BlockComment(depth) => {
                if c == '*' && next == Some('/') {
                    take = 2;
                    state = if depth == 1 {
                        State::Normal
                    } else {
                        State::BlockComment(depth - 1)
                    };
                } else if c == '/' && next == Some('*') {
                    take = 2;
                    state = State::BlockComment(depth + 1);
                }
            }
        }
        // The characters taken belong to a comment if it opens, goes on or closes here.
        let in_comment =
            was_comment || matches!(state, State::LineComment | State::BlockComment(_));
        for &ch in &chars[i..(i + take).min(chars.len())] {
            if !has_sql && !in_comment && !ch.is_whitespace() {
                // A statement starts here (comments before it are dropped).
                has_sql = true;
                start_line = line;
                cur.clear();
            }
            if has_sql {
                cur.push(ch);
            }
            if ch == '\n' {
                line += 1;
            }
        }
        prev = chars.get(i + take - 1).copied();
        i += take;
    }
    match state {
        State::Normal | State::LineComment => {}
        _ => {
            return Err(Refused {
                line: start_line,
                reason: "the script ends inside a quoted literal, identifier or comment".into(),
            })
        }
    }
    if has_sql && !cur.trim().is_empty() {
        out.push(Statement {
            line: start_line,
            sql: cur,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(script: &str) -> Vec<(usize, String)> {
        split(script)
            .unwrap()
            .into_iter()
            .map(|s| (s.line, s.sql))
            .collect()
    }

    #[test]
    fn pg_dumpall_output_splits_into_its_statements() {
        let script = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict Pe7dw8qpbNu\n\nSET default_transaction_read_only = off;\n\n\
CREATE ROLE \"odd\\role'x\";\n\
COMMENT ON ROLE \"odd\\role'x\" IS E'comment with \\\\! backslash and ''quote''';\n\
CREATE ROLE \"we\"\"ird\nname\";\n\
-- User Config \"odd\\role'x\"\n\
ALTER ROLE \"odd\\role'x\" SET search_path TO E'a\\\\b';\n\
/* a /* nested */ comment \\! */\n\
CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$SELECT '\\!; x'$body$;\n\
SELECT $1, a$b$c, 'it''s';\n\
\\unrestrict Pe7dw8qpbNu\n\n--\n-- done\n--\n";
        let got = sqls(script);
        let want: Vec<(usize, &str)> =
            vec![
            (7, "SET default_transaction_read_only = off;"),
            (9, "CREATE ROLE \"odd\\role'x\";"),
            (
                10,
                "COMMENT ON ROLE \"odd\\role'x\" IS E'comment with \\\\! backslash and ''quote''';",
            ),
            (11, "CREATE ROLE \"we\"\"ird\nname\";"),
            (14, "ALTER ROLE \"odd\\role'x\" SET search_path TO E'a\\\\b';"),
            (
                16,
                "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$SELECT '\\!; x'$body$;",
            ),
            (17, "SELECT $1, a$b$c, 'it''s';"),
        ];
        let got: Vec<(usize, &str)> = got.iter().map(|(l, s)| (*l, s.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn meta_commands_are_refused_with_their_line() {
        for (script, line) in [
            ("SELECT 1;\n\\! touch /tmp/x\n", 2),
            ("SELECT 1; \\! touch /tmp/x\n", 1),
            ("CREATE ROLE a;\n  \\o |sh\n", 2),
            ("SELECT 1\n\\g |sh\n", 2),
            ("\\connect db \\! id\n", 1),
            ("\\connect `id`\n", 1),
            ("\\connect\n", 1),
            ("\\copy t from program 'id'\n", 1),
            ("SELECT 'a' \\\\ SELECT 2;\n", 1),
            // Where a plain literal with a backslash ends depends on a setting: refused.
            (
                "SET standard_conforming_strings = off;\nSELECT 'x\\' \\! id '';\n",
                2,
            ),
            // E only starts an escape string at a word boundary.
            ("SELECT xe'\\' \\! id ';\n", 1),
            ("SELECT '\n\n", 1),
        ] {
            let err = split(script).unwrap_err();
            assert_eq!(err.line, line, "{script:?}: {err}");
        }
        assert!(split("SELECT 1;\n\\! touch /tmp/x\n")
            .unwrap_err()
            .to_string()
            .contains("\\\\! touch /tmp/x"));
    }

    #[test]
    fn pg_dumpall_meta_lines_are_skipped() {
        assert_eq!(
            sqls("\\connect template1\nCREATE ROLE a;\n\\connect -reuse\nDROP ROLE b\n"),
            vec![
                (2, "CREATE ROLE a;".to_string()),
                (4, "DROP ROLE b\n".to_string())
            ]
        );
    }
}
