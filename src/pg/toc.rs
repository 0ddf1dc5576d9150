//! Reading the table of contents of a `pg_dump -Fc` archive, as `pg_restore -l` prints it.
//!
//! A logical backup records what its dump's TOC lists (counts by kind, so a later test
//! restore can be compared with it) and which tables the dump carries data for (the
//! rows are counted for exactly those). `restore --table` builds a `pg_restore -L` list
//! from it. Lines look like
//! `3365; 0 16386 TABLE DATA public t postgres`: dump id, catalog table OID, object
//! OID, kind (which may contain spaces), schema (`-` when none), tag, owner. For `TABLE`
//! and `TABLE DATA` the object OID is the table's OID, which identifies a table without
//! parsing names that may contain spaces.

use std::collections::{BTreeMap, BTreeSet};

/// Kinds of TOC entries made of several words (pg_dump's `desc` strings), longest first
/// so that `MATERIALIZED VIEW DATA` wins over `MATERIALIZED VIEW`.
const MULTI_WORD_KINDS: &[&str] = &[
    "PUBLICATION TABLES IN SCHEMA",
    "MATERIALIZED VIEW DATA",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH TEMPLATE",
    "TEXT SEARCH PARSER",
    "FOREIGN DATA WRAPPER",
    "DATABASE PROPERTIES",
    "PROCEDURAL LANGUAGE",
    "SEQUENCE OWNED BY",
    "PUBLICATION TABLE",
    "MATERIALIZED VIEW",
    "CHECK CONSTRAINT",
    "OPERATOR FAMILY",
    "OPERATOR CLASS",
    "ACCESS METHOD",
    "EVENT TRIGGER",
    "FK CONSTRAINT",
    "FOREIGN TABLE",
    "INDEX ATTACH",
    "LARGE OBJECT",
    "ROW SECURITY",
    "SEQUENCE SET",
    "TABLE ATTACH",
    "USER MAPPING",
    "DEFAULT ACL",
    "TABLE DATA",
    "SHELL TYPE",
];

/// One line of a `pg_restore -l` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry<'a> {
    pub dump_id: u32,
    pub catalog_table_oid: u32,
    pub oid: u32,
    pub kind: &'a str,
    /// `schema tag owner`, as printed (names may contain spaces).
    pub rest: &'a str,
}

/// Parse one listing line; comments (`;`) and blank lines give `None`.
pub fn parse_line(line: &str) -> Option<TocEntry<'_>> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.starts_with(';') || line.trim().is_empty() {
        return None;
    }
    let (id, after) = line.split_once("; ")?;
    let dump_id = id.trim().parse().ok()?;
    let mut it = after.splitn(3, ' ');
    let catalog_table_oid = it.next()?.parse().ok()?;
    let oid = it.next()?.parse().ok()?;
    let tail = it.next()?;
    let kind_len = MULTI_WORD_KINDS
        .iter()
        .find(|k| {
            tail.starts_with(**k) && (tail.len() == k.len() || tail.as_bytes()[k.len()] == b' ')
        })
        .map(|k| k.len())
        .unwrap_or_else(|| tail.find(' ').unwrap_or(tail.len()));
    let kind = &tail[..kind_len];
    let rest = tail.get(kind_len + 1..).unwrap_or("");
    Some(TocEntry {
        dump_id,
        catalog_table_oid,
        oid,
        kind,
        rest,
    })
}

/// What the archive contains, by kind.
pub fn counts(listing: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in listing.lines().filter_map(parse_line) {
        *m.entry(e.kind.to_string()).or_insert(0) += 1;
    }
    m
}

/// OIDs of the tables the archive holds rows for (its `TABLE DATA` entries).
pub fn table_data_oids(listing: &str) -> Vec<u32> {
    listing
        .lines()
        .filter_map(parse_line)
        .filter(|e| e.kind == "TABLE DATA")
        .map(|e| e.oid)
        .collect()
}

/// pg_restore prints names with newlines replaced by spaces and empty ones as `-`.
pub fn sanitize(name: &str) -> String {
    if name.is_empty() {
        return "-".into();
    }
    name.replace(['\n', '\r'], " ")
}

/// A table to restore, as the manifest knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedTable {
    pub schema: String,
    pub table: String,
    /// The table's OID in the dump, when known (exact match of TABLE and TABLE DATA).
    pub oid: Option<u32>,
    /// For a partitioned table: it has no rows itself, its partitions are restored too.
    pub attach: bool,
}

/// The `pg_restore -L` list restoring `wanted` tables: their definitions, rows and
/// primary key / unique / check constraints, plus `TABLE ATTACH` of partitions whose
/// parent is restored too. Indexes, defaults, triggers and foreign keys are left out:
/// they may depend on objects that are not restored (like `pg_restore -t`).
/// Returns the list and the tables it found no definition for.
pub fn select_tables(listing: &str, wanted: &[WantedTable]) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut found: BTreeSet<usize> = BTreeSet::new();
    for line in listing.lines() {
        let Some(e) = parse_line(line) else { continue };
        let hit = wanted.iter().position(|w| {
            let prefix = format!("{} {} ", sanitize(&w.schema), sanitize(&w.table));
            match e.kind {
                "TABLE" | "TABLE DATA" => match w.oid {
                    Some(oid) if oid != 0 => e.oid == oid,
                    _ => e.rest.starts_with(&prefix),
                },
                "CONSTRAINT" | "CHECK CONSTRAINT" => e.rest.starts_with(&prefix),
                "TABLE ATTACH" => w.attach && e.rest.starts_with(&prefix),
                _ => false,
            }
        });
        if let Some(i) = hit {
            if e.kind == "TABLE" {
                found.insert(i);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    let missing = wanted
        .iter()
        .enumerate()
        .filter(|(i, _)| !found.contains(i))
        .map(|(_, w)| format!("{}.{}", w.schema, w.table))
        .collect();
    (out, missing)
}

/// TOC kinds compared between the dump and the restored database.
pub const COMPARED_KINDS: &[&str] = &[
    "TABLE",
    "INDEX",
    "CONSTRAINT",
    "FK CONSTRAINT",
    "SEQUENCE",
    "FUNCTION",
    "PROCEDURE",
    "VIEW",
    "MATERIALIZED VIEW",
    "TRIGGER",
];

/// Compare per-kind counts; returns a summary of what matched and every mismatch.
pub fn compare_counts(
    dumped: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
) -> (String, Vec<String>) {
    let mut summary = vec![];
    let mut mismatches = vec![];
    for kind in COMPARED_KINDS {
        let want = dumped.get(*kind).copied().unwrap_or(0);
        let got = restored.get(*kind).copied().unwrap_or(0);
        if want != got {
            mismatches.push(format!(
                "the dump lists {want} {kind} entries, the restored database has {got}"
            ));
        } else if want > 0 {
            summary.push(format!("{want} {kind}"));
        }
    }
    (summary.join(", "), mismatches)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn toc_counts_compare_kind_by_kind() {
        let dumped: BTreeMap<String, u64> = [("TABLE", 3), ("INDEX", 2), ("TABLE DATA", 3)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let mut restored = dumped.clone();
        restored.remove("TABLE DATA");
        let (ok, m) = compare_counts(&dumped, &restored);
        assert!(
            m.is_empty() && ok.contains("3 TABLE") && ok.contains("2 INDEX"),
            "{ok} {m:?}"
        );
        restored.insert("INDEX".into(), 1);
        let (_, m) = compare_counts(&dumped, &restored);
        assert_eq!(
            m,
            vec!["the dump lists 2 INDEX entries, the restored database has 1".to_string()]
        );
    }

    const LISTING: &str = "\
;
; Archive created at 2026-11-22 07:22:13 UTC
;     dbname: postgres
;
6; 2615 16384 SCHEMA - s2 postgres
218; 1259 16404 TABLE public m postgres
219; 1259 16407 TABLE public m_2024 postgres
220; 1259 16412 MATERIALIZED VIEW public mv postgres
216; 1259 16386 TABLE public t postgres
215; 1259 16385 SEQUENCE public t_id_seq postgres
3378; 0 0 SEQUENCE OWNED BY public t_id_seq postgres
217; 1259 16396 TABLE s2 my tab postgres
230; 1259 16500 TABLE s2 my postgres
3214; 0 0 TABLE ATTACH public m_2024 postgres
3215; 2604 16389 DEFAULT public t id postgres
3369; 2613 16410 BLOB - 16410 postgres
3367; 0 16407 TABLE DATA public m_2024 postgres
3365; 0 16386 TABLE DATA public t postgres
3366; 0 16396 TABLE DATA s2 my tab postgres
3380; 0 16500 TABLE DATA s2 my postgres
3379; 0 0 SEQUENCE SET public t_id_seq postgres
3370; 0 0 BLOBS - BLOBS 
3218; 2606 16394 CONSTRAINT public t t_pkey postgres
3219; 1259 16395 INDEX public t_v_idx postgres
3220; 2606 16399 FK CONSTRAINT s2 my tab my tab_a_fkey postgres
3368; 0 16412 MATERIALIZED VIEW DATA public mv postgres
";

    #[test]
    fn parses_kinds_with_spaces() {
        let cases = [
            (
                "3365; 0 16386 TABLE DATA public t postgres",
                "TABLE DATA",
                16386,
                "public t postgres",
            ),
            (
                "215; 1259 16385 SEQUENCE public t_id_seq postgres",
                "SEQUENCE",
                16385,
                "public t_id_seq postgres",
            ),
            (
                "3368; 0 16412 MATERIALIZED VIEW DATA public mv postgres",
                "MATERIALIZED VIEW DATA",
                16412,
                "public mv postgres",
            ),
            (
                "220; 1259 16412 MATERIALIZED VIEW public mv postgres",
                "MATERIALIZED VIEW",
                16412,
                "public mv postgres",
            ),
            ("3370; 0 0 BLOBS - BLOBS ", "BLOBS", 0, "- BLOBS "),
            (
                "3220; 2606 16399 FK CONSTRAINT s2 my tab my tab_a_fkey postgres",
                "FK CONSTRAINT",
                16399,
                "s2 my tab my tab_a_fkey postgres",
            ),
            // A one-word kind that begins like a multi-word one.
            (
                "12; 1259 16400 TABLESPACE - x postgres",
                "TABLESPACE",
                16400,
                "- x postgres",
            ),
        ];
        for (line, kind, oid, rest) in cases {
            let e = parse_line(line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!((e.kind, e.oid, e.rest), (kind, oid, rest), "{line}");
        }
        assert_eq!(parse_line("; comment"), None);
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn counts_by_kind_and_finds_table_data() {
        let c = counts(LISTING);
        assert_eq!(c["TABLE"], 5);
        assert_eq!(c["TABLE DATA"], 4);
        assert_eq!(c["CONSTRAINT"], 1);
        assert_eq!(c["FK CONSTRAINT"], 1);
        assert_eq!(c["MATERIALIZED VIEW DATA"], 1);
        assert_eq!(c["BLOBS"], 1);
        assert!(!c.contains_key("DATA"));
        assert_eq!(table_data_oids(LISTING), vec![16407, 16386, 16396, 16500]);
    }

    #[test]
    fn selects_one_table_with_its_constraints() {
        let want = |schema: &str, table: &str, oid: Option<u32>, attach: bool| WantedTable {
            schema: schema.into(),
            table: table.into(),
            oid,
            attach,
        };
        let (list, missing) = select_tables(LISTING, &[want("public", "t", Some(16386), false)]);
        assert!(missing.is_empty());
        let ids: Vec<u32> = list
            .lines()
            .filter_map(parse_line)
            .map(|e| e.dump_id)
            .collect();
        assert_eq!(ids, vec![216, 3365, 3218]);

        // "s2.my" must not pick up "s2.my tab" (names with spaces): matched by OID.
        let (list, _) = select_tables(LISTING, &[want("s2", "my", Some(16500), false)]);
        let ids: Vec<u32> = list
            .lines()
            .filter_map(parse_line)
            .map(|e| e.dump_id)
            .collect();
        assert_eq!(ids, vec![230, 3380]);

        // A partitioned table with its partition: parent, leaf, attach, rows.
        let (list, _) = select_tables(
            LISTING,
            &[
                want("public", "m", None, true),
                want("public", "m_2024", Some(16407), true),
            ],
        );
        let ids: Vec<u32> = list
            .lines()
            .filter_map(parse_line)
            .map(|e| e.dump_id)
            .collect();
        assert_eq!(ids, vec![218, 219, 3214, 3367]);

        let (_, missing) = select_tables(LISTING, &[want("public", "nope", None, false)]);
        assert_eq!(missing, vec!["public.nope".to_string()]);
    }
}
