//! PostgreSQL 17+'s WAL summaries: which blocks of which relation forks the WAL of an
//! LSN range changed, as the server's WAL summarizer (`summarize_wal = on`) recorded
//! them in `pg_wal/summaries/`. Incremental backups use them to read only the blocks
//! that changed since the parent backup's start, instead of every page's LSN.
//!
//! A summary file covers `[start, end)` of one timeline; `pg_wal_summary_contents()`
//! reads one whole file, so a range is answered by a chain of files that covers it
//! without a gap (files may begin before the range or end after it: that only reports
//! more blocks as changed, never fewer). When no chain covers the range (summarization
//! was off for a while, or the files were removed after `wal_summary_keep_time`, or the
//! range crosses a timeline switch) the answer says why and the caller falls back to
//! reading page LSNs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::Client;

use crate::pg::wal::Lsn;

/// The first major version with WAL summaries.
pub const FIRST_MAJOR: u32 = 17;

/// One summary file: what `pg_available_wal_summaries()` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Summary {
    pub tli: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// A relation fork, as WAL names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFork {
    pub tablespace: u32,
    pub database: u32,
    pub relfilenode: u32,
    /// 0 main, 1 free space map, 2 visibility map, 3 init.
    pub fork: i16,
}

/// What the summaries say about one fork.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForkChanges {
    /// Blocks WAL modified.
    pub blocks: BTreeSet<u32>,
    /// The shortest length the fork was truncated to in the range (0: created or
    /// truncated to nothing); `None` when it was neither created nor truncated.
    pub limit: Option<u32>,
}

/// The blocks the WAL of `[start, end)` changed, fork by fork. A fork that is absent
/// did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    pub tli: u32,
    pub start: Lsn,
    pub end: Lsn,
    /// The summary files the answer was read from.
    pub summaries: Vec<Summary>,
    pub forks: BTreeMap<RelFork, ForkChanges>,
}

/// The summarizer's progress (`pg_get_wal_summarizer_state()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummarizerState {
    pub tli: u32,
    /// Everything before this LSN is in summary files.
    pub summarized: Lsn,
}

/// The summary files that cover `[start, end)` of timeline `tli` without a gap, fewest
/// first-fit; or why there are none.
pub fn cover(all: &[Summary], tli: u32, start: Lsn, end: Lsn) -> Result<Vec<Summary>, String> {
    let mut chain = vec![];
    let mut pos = start;
    while pos < end {
        let next = all
            .iter()
            .filter(|s| s.tli == tli && s.start <= pos && s.end > pos)
            .max_by_key(|s| s.end)
            .ok_or_else(|| {
                format!(
                    "no WAL summary of timeline {tli} covers {pos} (summaries are needed from {start} to {end})"
                )
            })?;
        chain.push(*next);
        pos = next.end;
    }
    Ok(chain)
}

fn lsn(text: &str) -> anyhow::Result<Lsn> {
    text.parse()
        .map_err(|e: String| anyhow::anyhow!("LSN {text:?}: {e}"))
}

/// The summarizer's state, or `None` where there is no summarizer (before 17) or it is
/// off (`summarize_wal = off`).
pub async fn summarizer_state(
    client: &Client,
    major: u32,
) -> anyhow::Result<Option<SummarizerState>> {
    if major < FIRST_MAJOR {
        return Ok(None);
    }
    let on: String = client
        .query_one("SELECT current_setting('summarize_wal')", &[])
        .await
        .context("read summarize_wal")?
        .get(0);
    if on != "on" {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT summarized_tli, summarized_lsn::text FROM pg_get_wal_summarizer_state()",
            &[],
        )
        .await
        .context("pg_get_wal_summarizer_state()")?;
    Ok(Some(SummarizerState {
        tli: row.get::<_, i64>(0) as u32,
        summarized: lsn(&row.get::<_, String>(1))?,
    }))
}

/// Wait until the summarizer has summarized everything before `upto`, at most
/// `timeout`; false if it did not (or there is no summarizer).
pub async fn wait_summarized(
    client: &Client,
    major: u32,
    upto: Lsn,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    loop {
        match summarizer_state(client, major).await? {
            None => return Ok(false),
            Some(s) if s.summarized >= upto => return Ok(true),
            Some(_) if started.elapsed() >= timeout => return Ok(false),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The blocks the WAL of `[start, end)` on timeline `tli` changed, from the server's
/// summaries; `Ok(Err(why))` when the summaries do not cover the range.
pub async fn changed_blocks(
    client: &Client,
    tli: u32,
    start: Lsn,
    end: Lsn,
) -> anyhow::Result<Result<Changes, String>> {
    let rows = match client
        .query(
            "SELECT tli, start_lsn::text, end_lsn::text FROM pg_available_wal_summaries()",
            &[],
        )
        .await
    {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            return Ok(Err(
                "the WAL summary functions need a superuser, or EXECUTE on \
                 pg_available_wal_summaries() and pg_wal_summary_contents()"
                    .into(),
            ))
        }
        other => other.context("pg_available_wal_summaries()")?,
    };
    let all: Vec<Summary> = rows
        .iter()
        .map(|r| {
            Ok(Summary {
                tli: r.get::<_, i64>(0) as u32,
                start: lsn(&r.get::<_, String>(1))?,
                end: lsn(&r.get::<_, String>(2))?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let chain = match cover(&all, tli, start, end) {
        Ok(chain) => chain,
        Err(why) => return Ok(Err(why)),
    };
    let mut forks: BTreeMap<RelFork, ForkChanges> = BTreeMap::new();
    for s in &chain {
        let rows = client
            .query(
                "SELECT relfilenode::int8, reltablespace::int8, reldatabase::int8, \
                        relforknumber::int2, relblocknumber, is_limit_block \
                 FROM pg_wal_summary_contents($1, $2::text::pg_lsn, $3::text::pg_lsn)",
                &[&(s.tli as i64), &s.start.to_string(), &s.end.to_string()],
            )
            .await
            .with_context(|| {
                format!("pg_wal_summary_contents({}, {}, {})", s.tli, s.start, s.end)
            })?;
        for r in rows {
            let fork = RelFork {
                relfilenode: r.get::<_, i64>(0) as u32,
                tablespace: r.get::<_, i64>(1) as u32,
                database: r.get::<_, i64>(2) as u32,
                fork: r.get(3),
            };
            let block = r.get::<_, i64>(4) as u32;
            let entry = forks.entry(fork).or_default();
            if r.get::<_, bool>(5) {
                entry.limit = Some(entry.limit.map_or(block, |l| l.min(block)));
            } else {
                entry.blocks.insert(block);
            }
        }
    }
    Ok(Ok(Changes {
        tli,
        start,
        end,
        summaries: chain,
        forks,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(tli: u32, start: u64, end: u64) -> Summary {
        Summary {
            tli,
            start: Lsn(start),
            end: Lsn(end),
        }
    }

    #[test]
    fn a_range_is_covered_by_a_chain_without_gaps_or_not_at_all() {
        let all = [
            s(1, 0, 100),
            s(1, 100, 250),
            s(1, 90, 180),
            s(1, 250, 400),
            s(2, 400, 500),
        ];
        // Files may start before the range and end after it.
        assert_eq!(
            cover(&all, 1, Lsn(50), Lsn(260)).unwrap(),
            vec![s(1, 0, 100), s(1, 100, 250), s(1, 250, 400)]
        );
        // The longest file that covers a position is taken.
        assert_eq!(
            cover(&all, 1, Lsn(95), Lsn(240)).unwrap(),
            vec![s(1, 90, 180), s(1, 100, 250)]
        );
        assert_eq!(cover(&all, 1, Lsn(10), Lsn(10)).unwrap(), vec![]);
        // Past the last summary, or on another timeline: not covered, saying where.
        let err = cover(&all, 1, Lsn(300), Lsn(450)).unwrap_err();
        assert!(err.contains("0/190"), "{err}");
        assert!(cover(&all, 2, Lsn(300), Lsn(450)).is_err());
        assert!(cover(&[s(1, 0, 100), s(1, 120, 200)], 1, Lsn(0), Lsn(150)).is_err());
    }
}
