//! Human renderings of the operations' reports: the text `backupctl` prints on stdout
//! when `--json` is not given. One function per report; each prints and decides nothing.

use chrono::{DateTime, Utc};

use crate::archival::count::Analyzed;
use crate::archival::plan::Cursor;
use crate::archival::report::{ArchiveSummary, TableStatus};
use crate::manifest::{Manifest, Outcome, Unreadable};
use crate::ops::across::RepositoryView;
use crate::ops::check::{Report as CheckReport, Status as CheckStatus};
use crate::ops::info::{DaemonView, Summary};
use crate::ops::list::Listing;
use crate::ops::restore::Report as RestoreReport;
use crate::ops::retention::RetentionReport;
use crate::ops::verify::VerifyReport;
use crate::partitions::report::{PartitionsSummary, Status};
use crate::recovery::plan::Window;
use crate::recovery::target::format_pg_time;
use crate::text::human_bytes;

/// Times for people, in the configured zone (`display.timezone`, else
/// `schedule.timezone`), to the second.
pub fn local_time(t: &DateTime<Utc>, tz: &chrono_tz::Tz) -> String {
    t.with_timezone(tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn list(listing: &Listing, tz: &chrono_tz::Tz) {
    println!("repository: {}", listing.repository);
    if listing.backups.is_empty() {
        println!("no backups");
    } else {
        println!("times in {tz}");
        println!(
            "{:<28} {:<8} {:<14} {:<20} {:<20} {:<24} {:>10} {:>10} {:<8}",
            "ID", "KIND", "LABEL", "STARTED", "STOPPED", "LSN", "STORED", "ORIGINAL", "VERIFIED"
        );
        for (b, m) in listing.backups.iter().zip(&listing.manifests) {
            let lsn = match (&b.start_lsn, &b.stop_lsn) {
                (Some(a), Some(z)) => format!("{a}-{z}"),
                _ => "-".into(),
            };
            println!(
                "{:<28} {:<8} {:<14} {:<20} {:<20} {:<24} {:>10} {:>10} {:<8}",
                b.id,
                b.kind,
                b.label.as_deref().unwrap_or("-"),
                m.start_time.with_timezone(tz).format("%Y-%m-%d %H:%M:%S"),
                m.stop_time.with_timezone(tz).format("%Y-%m-%d %H:%M:%S"),
                lsn,
                human_bytes(b.stored_bytes),
                human_bytes(b.original_bytes),
                b.verified.as_deref().unwrap_or("no")
            );
            if let (Some(parent), Some(n)) = (&b.parent, b.chain_length) {
                println!("    incremental since {parent} (chain length {n})");
            }
            if !b.repositories.is_empty() {
                println!("    in repositories: {}", b.repositories.join(", "));
            }
            for d in &b.databases {
                println!(
                    "    database {:<20} {:>10}  {} tables, {} rows",
                    d.name,
                    human_bytes(d.size_bytes.max(0) as u64),
                    d.tables,
                    d.rows
                );
            }
        }
    }
    windows(&listing.recoverable_windows, &listing.wal_gaps);
    each_repository(&listing.repositories);
    if !listing.incomplete_backups.is_empty() {
        println!(
            "incomplete backups (no manifest; in progress or failed): {}",
            listing.incomplete_backups.join(", ")
        );
    }
    unreadable(&listing.unreadable_manifests);
    if !listing.exports.is_empty() {
        println!("exports of archived data (backupctl restore-export ID --into TABLE):");
        println!(
            "  {:<56} {:<12} {:<40} {:<8} {:>10} {:>10}",
            "ID", "DATABASE", "FROM", "MONTH", "ROWS", "STORED"
        );
        for e in &listing.exports {
            println!(
                "  {:<56} {:<12} {:<40} {:<8} {:>10} {:>10}",
                e.id,
                e.database,
                e.relation,
                e.month.as_deref().unwrap_or("-"),
                e.rows,
                human_bytes(e.stored_bytes)
            );
        }
    }
    for u in &listing.unreadable_exports {
        println!("UNREADABLE export {u}");
    }
}

/// With several repositories: what each holds on its own.
fn each_repository(views: &[RepositoryView]) {
    for v in views {
        let role = if v.required { "required" } else { "optional" };
        print!(
            "repository {} ({role}; {}): {}",
            v.name,
            v.kinds.join(", "),
            v.location
        );
        if let Some(e) = &v.error {
            println!(": CANNOT BE READ: {e}");
            continue;
        }
        println!(
            ": {} backups, {} WAL segments",
            v.backups.len(),
            v.wal_segments
        );
        if v.recoverable_windows.is_empty() {
            println!(
                "  recoverable from it alone: nothing (no physical backup with its WAL in it)"
            );
        }
        for w in &v.recoverable_windows {
            println!(
                "  recoverable from it alone: {} → {} (timeline {})",
                format_pg_time(&w.from),
                w.to.map(|t| format_pg_time(&t))
                    .unwrap_or_else(|| "?".into()),
                w.timeline
            );
        }
        for g in &v.wal_gaps {
            println!("  WAL gap in it: {g}");
        }
    }
}

/// One line per backup whose manifest cannot be used.
fn unreadable(list: &[Unreadable]) {
    for u in list {
        println!("UNREADABLE {}: {}; fix: {}", u.id, u.reason, u.fix);
    }
}

pub fn windows(windows: &[Window], gaps: &[String]) {
    if windows.is_empty() {
        println!("recoverable window: none (no physical backup with its WAL)");
    }
    for w in windows {
        println!(
            "recoverable window: {} → {} (timeline {})",
            format_pg_time(&w.from),
            w.to.map(|t| format_pg_time(&t))
                .unwrap_or_else(|| "?".into()),
            w.timeline
        );
    }
    for g in gaps {
        println!("WAL gap: {g}");
    }
}

/// repo.json's major version; 0 means it was not known when the repository was created.
fn major_or_unknown(major: u32) -> String {
    if major == 0 {
        "unknown".into()
    } else {
        major.to_string()
    }
}

pub fn info_summary(s: &Summary, tz: &chrono_tz::Tz) {
    println!("repository:        {}", s.repository);
    for b in &s.wal_backlog {
        println!(
            "wal backlog:       repository {}: {} file(s) waiting{}{}{}",
            b.repository,
            b.files,
            b.oldest
                .as_ref()
                .map(|o| format!(", oldest {o}"))
                .unwrap_or_default(),
            b.paused_until
                .as_ref()
                .map(|t| format!(", next try after {t}"))
                .unwrap_or_default(),
            if b.lost.is_empty() {
                String::new()
            } else {
                format!(", {} LOST: {}", b.lost.len(), b.lost.join(", "))
            }
        );
    }
    match &s.identity {
        Some(i) => println!(
            "cluster:           system identifier {}, PostgreSQL {}, WAL segments of {}",
            i.system_identifier,
            major_or_unknown(i.pg_major),
            human_bytes(i.wal_segment_size)
        ),
        None => println!("cluster:           not initialised (no repo.json)"),
    }
    println!("backups:           {}", s.backups);
    for (what, b) in [
        ("newest physical:", &s.newest_physical),
        ("newest logical:", &s.newest_logical),
    ] {
        if let Some(b) = b {
            println!(
                "{what:<18} {} ({}, verified: {})",
                b.id,
                human_bytes(b.stored_bytes),
                b.verified.as_deref().unwrap_or("no")
            );
        }
    }
    println!(
        "WAL:               {} segments on timelines {:?}, {}; newest {} archived {}",
        s.wal.segments,
        s.wal.timelines,
        human_bytes(s.wal.stored_bytes),
        s.wal.newest_segment.as_deref().unwrap_or("-"),
        s.wal.newest_archived_at.as_deref().unwrap_or("-")
    );
    for t in &s.wal.timeline_history {
        let origin = match (t.parent, &t.switch_lsn) {
            (Some(p), Some(lsn)) => format!(
                "branched from {p} at {lsn} ({}){}",
                t.reason.as_deref().unwrap_or("-"),
                t.created_at
                    .as_deref()
                    .map(|c| format!(", created {c}"))
                    .unwrap_or_default()
            ),
            _ => "the cluster's first timeline".into(),
        };
        println!(
            "  timeline {:<4} {origin}; {} segments, newest {} archived {}{}",
            t.timeline,
            t.segments,
            t.newest_segment.as_deref().unwrap_or("-"),
            t.newest_archived_at.as_deref().unwrap_or("-"),
            if t.current {
                "  <- current (latest restores follow it)"
            } else {
                ""
            }
        );
    }
    match s.wal_verified_at {
        Some(t) => println!(
            "WAL verified:      every archived object read and intact as of {}",
            local_time(&t, tz)
        ),
        None => println!(
            "WAL verified:      never wholly (`backupctl verify --wal` reads every archived object)"
        ),
    }
    let u = &s.unfinished_uploads;
    if u.count == 0 {
        println!("unfinished uploads: none");
    } else {
        println!(
            "unfinished uploads: {} ({}) left by killed uploads, hidden from listings; {} by processes of this host that are gone \
             (the next backup, wal-push or retention removes them), the rest after retention.incomplete_after",
            u.count,
            human_bytes(u.bytes),
            u.of_dead_writers_here
        );
    }
    windows(&s.recoverable_windows, &s.wal_gaps);
    each_repository(&s.repositories);
    unreadable(&s.unreadable_manifests);
    if s.exports.count > 0 {
        println!(
            "exports:           {} of archived data, {} rows, {} stored; newest {}",
            s.exports.count,
            s.exports.rows,
            human_bytes(s.exports.stored_bytes),
            s.exports.newest.as_deref().unwrap_or("-")
        );
    }
    for u in &s.exports.unreadable {
        println!("UNREADABLE export {u}");
    }
    daemon(&s.daemon);
}

fn daemon(d: &DaemonView) {
    if let Some(e) = &d.history_error {
        println!("daemon history:    unreadable: {e}");
    }
    if d.jobs.is_empty() {
        println!(
            "daemon:            no job scheduled, no history in {}",
            d.state_file
        );
        return;
    }
    println!("daemon jobs (times in {}):", d.timezone);
    let tz: chrono_tz::Tz = d.timezone.parse().unwrap_or(chrono_tz::UTC);
    let t = |t: Option<DateTime<Utc>>| t.map(|t| local_time(&t, &tz)).unwrap_or_else(|| "-".into());
    for j in &d.jobs {
        let h = &j.history;
        let last = match (&h.running, h.last_outcome) {
            (Some(r), _) => format!("running since {} (run {})", t(Some(r.since)), r.run_id),
            (None, Some(o)) => format!(
                "last {} at {}{}",
                o.as_str(),
                t(h.last_end),
                h.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            (None, None) => "never ran".into(),
        };
        println!(
            "  {:<11} {:<18} next {:<26} {last}",
            j.job.as_str(),
            j.schedule.as_deref().unwrap_or("(not scheduled)"),
            t(j.next_run)
        );
    }
}

pub fn backup(m: &Manifest, tz: &chrono_tz::Tz) {
    println!("id:            {}", m.id);
    println!("kind:          {}", m.kind);
    println!("label:         {}", m.label.as_deref().unwrap_or("-"));
    println!(
        "host:          {} (cluster {}, system identifier {})",
        m.host, m.cluster, m.system_identifier
    );
    println!("PostgreSQL:    {}", m.pg_version);
    println!("started:       {}", local_time(&m.start_time, tz));
    println!("stopped:       {}", local_time(&m.stop_time, tz));
    println!(
        "size:          {} stored, {} original ({:?} level {})",
        human_bytes(m.stored_bytes()),
        human_bytes(m.original_bytes()),
        m.compression.algorithm,
        m.compression.level
    );
    if let Some(p) = &m.physical {
        println!("timeline:      {}", p.timeline);
        println!(
            "WAL:           {} ({}) → {} ({})",
            p.start_lsn, p.start_wal, p.stop_lsn, p.stop_wal
        );
        println!("files:         {} from {}", p.files, p.pgdata);
        for t in &p.tablespaces {
            println!("tablespace:    {} ({}) at {}", t.name, t.oid, t.location);
        }
    }
    if let Some(l) = &m.logical {
        for d in &l.databases {
            println!(
                "database:      {} ({}, {} tables, {} rows)",
                d.name,
                human_bytes(d.size_bytes.max(0) as u64),
                d.tables.len(),
                d.total_rows()
            );
        }
    }
    if let Some(rp) = &m.restore_point {
        println!(
            "restore point: {} at {} ({})",
            rp.name,
            rp.lsn,
            local_time(&rp.time, tz)
        );
    }
    match &m.verification {
        Some(v) => println!(
            "verified:      {:?} at {} in {:.1}s{}",
            v.outcome,
            local_time(&v.time, tz),
            v.duration_secs,
            if v.failures.is_empty() {
                String::new()
            } else {
                format!(": {}", v.failures.join("; "))
            }
        ),
        None => println!("verified:      no"),
    }
    println!("objects:");
    for o in &m.objects {
        println!(
            "  {:<32} {:>10} stored {:>10} original  sha256 {}",
            o.name,
            human_bytes(o.stored_size),
            human_bytes(o.size),
            o.sha256
        );
    }
}

pub fn retention(r: &RetentionReport, tz: &chrono_tz::Tz) {
    let p = &r.policy;
    println!("repository: {}", r.repository);
    let labels = if p.labels.is_empty() {
        "none (labelled backups are kept)".to_string()
    } else {
        p.labels
            .iter()
            .map(|(l, d)| format!("{l}: {d}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    println!(
        "policy: physical: {} | logical: {} | labels: {labels} | wal: {} | incomplete_after: {}",
        p.physical, p.logical, p.wal, p.incomplete_after
    );
    let plan = &r.plan;
    if plan.backups.is_empty() {
        println!("backups: none");
    } else {
        println!("backups:");
    }
    for b in &plan.backups {
        let d = &b.decision;
        let label = d
            .label
            .as_deref()
            .map(|l| format!(" [{l}]"))
            .unwrap_or_default();
        println!(
            "  {:<6} {}{label}  started {}  {}  {}",
            d.action.as_str(),
            d.id,
            local_time(&d.start_time, tz),
            human_bytes(b.bytes),
            d.reasons.join("; ")
        );
    }
    let x = &r.exports;
    if x.kept + x.delete.len() + x.unfinished.len() + x.unreadable.len() > 0 {
        println!(
            "exports: {}; {} kept{}",
            x.rule,
            x.kept,
            if x.delete.is_empty() {
                String::new()
            } else {
                format!(", delete {}", x.delete.join(", "))
            }
        );
        if !x.unfinished.is_empty() {
            println!(
                "  unfinished exports (no manifest, older than incomplete_after), deleted: {}",
                x.unfinished.join(", ")
            );
        }
        for u in &x.unreadable {
            println!("  UNREADABLE export {u} (kept)");
        }
    }
    if !plan.incomplete.is_empty() {
        println!("backups without a manifest:");
        for i in &plan.incomplete {
            println!(
                "  {:<6} {}  {} object{}  {}  {}",
                i.action.as_str(),
                i.id,
                i.objects,
                if i.objects == 1 { "" } else { "s" },
                human_bytes(i.bytes),
                i.reason
            );
        }
    }
    match &plan.wal.keep_from {
        Some(k) => println!(
            "WAL (kept from {}, the start of the oldest kept physical backup {}, on every timeline):",
            k.segment, k.backup
        ),
        None => println!("WAL:"),
    }
    if plan.wal.ranges.is_empty() {
        println!("  none archived");
    }
    for w in &plan.wal.ranges {
        let what = if w.first == w.last {
            w.first.clone()
        } else {
            format!("{} … {}", w.first, w.last)
        };
        println!(
            "  {:<6} {what}  {} file{}  {}  {}",
            w.action.as_str(),
            w.files,
            if w.files == 1 { "" } else { "s" },
            human_bytes(w.bytes),
            w.reason
        );
    }
    if plan.recoverable_windows.is_empty() {
        println!("recoverable window afterwards: none (no kept physical backup with its WAL)");
    }
    for w in &plan.recoverable_windows {
        println!(
            "recoverable window afterwards: {} → {} (timeline {})",
            format_pg_time(&w.from),
            w.to.map(|t| format_pg_time(&t))
                .unwrap_or_else(|| "?".into()),
            w.timeline
        );
    }
    let d = &plan.delete;
    let what = format!(
        "{} backup{}, {} without a manifest, {} WAL file{}: {} object{}, {}",
        d.backups.len(),
        if d.backups.len() == 1 { "" } else { "s" },
        d.incomplete.len(),
        d.wal_files,
        if d.wal_files == 1 { "" } else { "s" },
        d.objects,
        if d.objects == 1 { "" } else { "s" },
        human_bytes(d.bytes)
    );
    match (&r.freed, r.upload_leftovers_removed) {
        (Some(_), leftovers) => println!(
            "freed {what}; removed {} unfinished upload{}",
            leftovers.unwrap_or(0),
            if leftovers == Some(1) { "" } else { "s" }
        ),
        (None, _) => println!("dry run: would delete {what}; nothing was deleted"),
    }
}

pub fn verify(report: &VerifyReport) {
    for r in &report.backups {
        let v = &r.verification;
        let at = r
            .repository
            .as_ref()
            .map(|n| format!(" in repository {n}"))
            .unwrap_or_default();
        match v.outcome {
            Outcome::Ok => println!(
                "OK     {} ({}){at} restored and queryable in {:.1}s, {} scratch",
                r.id,
                r.kind,
                v.duration_secs,
                human_bytes(v.scratch_bytes)
            ),
            Outcome::Failed => println!("FAILED {} ({}){at}", r.id, r.kind),
        }
        if let Some(k) = &r.encryption_key {
            println!("       encrypted with key {k}");
        }
        for c in &v.checked {
            println!("       checked: {c}");
        }
        for f in &v.failures {
            println!("       FAILURE: {f}");
        }
    }
    for r in &report.unreadable_repositories {
        println!("FAILED repository {r}");
    }
    for w in report.wal_reports() {
        if let Some(n) = &w.repository {
            println!("WAL in repository {n}:");
        }
        windows(&w.recoverable_windows, &w.gaps);
        if w.recoverable_windows.is_empty() {
            println!("FAILED no physical backup has the WAL it needs");
        } else if !w.gaps.is_empty() {
            println!("FAILED WAL has gaps");
        } else {
            println!(
                "OK     WAL is continuous from the oldest physical backup to the newest segment"
            );
        }
        let c = &w.content;
        let status = if c.failures.is_empty() {
            "OK    "
        } else {
            "FAILED"
        };
        println!(
            "{status} archived WAL read: {} object(s), {} read and checked now ({}), {} unchanged since an earlier check, {} damaged",
            c.objects,
            c.checked,
            human_bytes(c.bytes_read),
            c.skipped_unchanged,
            c.failures.len()
        );
        for f in &c.failures {
            println!("       FAILURE: {f}");
        }
    }
}

pub fn partitions(s: &PartitionsSummary) {
    if s.tables.is_empty() {
        println!("no [[partitions]] policies in the config");
    }
    for t in &s.tables {
        match &t.key {
            Some(k) => println!(
                "{} in database {} ({}, {}; months in {}, premake {})",
                t.table,
                t.database,
                k.definition,
                k.key.sql(),
                t.timezone,
                t.premake
            ),
            None => println!("{} in database {}", t.table, t.database),
        }
        if let Some(e) = &t.error {
            println!("  ERROR {e}");
        }
        for m in &t.months {
            let status = m.status.as_str();
            println!(
                "  {}  {:<40} {:<12} [{}, {})",
                m.month, m.partition, status, m.from, m.to
            );
            if let Some(d) = &m.detail {
                println!("           {d}");
            }
            if (s.dry_run && m.status == Status::WouldCreate) || m.status == Status::Missing {
                if let Some(q) = &m.sql {
                    println!("           {q};");
                }
            }
            if let Some(fix) = &m.resolve {
                println!("           resolve with:");
                for line in fix.lines() {
                    println!("             {line}");
                }
            }
        }
        let missing = t
            .months
            .iter()
            .filter(|m| m.status == Status::Missing)
            .count();
        if missing > 0 {
            println!(
                "  {missing} month(s) between the oldest partition and now have no partition: run the SQL above, or set backfill = true"
            );
        }
    }
    if s.dry_run {
        println!("dry run: nothing was changed");
    }
}

pub fn archive(s: &ArchiveSummary, tz: &chrono_tz::Tz) {
    if s.tables.is_empty() {
        println!("no [[archive]] policies in the config");
    }
    for t in &s.tables {
        let target = t
            .archive_table
            .clone()
            .unwrap_or_else(|| format!("schema {}", t.archive_schema));
        println!(
            "{} → {} ({} mode, database {})",
            t.source.as_deref().unwrap_or(&t.table),
            target,
            t.mode,
            t.database
        );
        if let Some(c) = &t.cutoff {
            println!("  cutoff: {} < {c} ({})", t.column, t.cutoff_rule);
        }
        if !t.foreign_keys.is_empty() {
            println!("  foreign keys referencing it:");
            for fk in &t.foreign_keys {
                println!("    {fk}");
            }
        }
        for n in &t.notes {
            println!("  note: {n}");
        }
        for l in &t.leaves {
            let cursor = match &l.cursor {
                Cursor::Index { index } => format!("index {index}"),
                Cursor::Physical => "physical order (no index leads with the column)".into(),
            };
            let rows = match l.counted_rows {
                Some(n) => format!("{n} row(s) (counted)"),
                None => format!("~{} row(s) (estimate)", l.estimated_rows),
            };
            println!(
                "  {}: {rows} older than the cutoff, walked in {cursor}",
                l.table
            );
        }
        for q in &t.partitions {
            let status = serde_json::to_value(q.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let rows = match q.counted_rows {
                Some(n) => format!("{n} row(s)"),
                None => format!("~{} row(s)", q.estimated_rows),
            };
            println!("  {:<40} {:<10} {rows}  {}", q.partition, status, q.bound);
            if let Some(d) = &q.detail {
                println!("      {d}");
            }
        }
        if let Some(st) = &t.rows {
            println!(
                "  moved {} row(s) in {} batch(es) in {:.1} s ({:.0} rows/s); longest batch {:.0} ms",
                st.rows_moved,
                st.batches,
                st.elapsed_ms / 1e3,
                st.rows_per_second,
                st.longest_batch_ms
            );
        }
        if t.mode == "partitions" && !s.dry_run && t.log_id.is_some() {
            println!("  moved {} partition(s)", t.partitions_moved);
        }
        if let Some(x) = &t.exports {
            if let Some(c) = &x.cutoff {
                println!("  export: data wholly before {c} goes to the repository (export_after)");
            }
            for i in &x.items {
                let status = serde_json::to_value(i.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                println!(
                    "    {}{} {status}: {} row(s){}",
                    i.relation,
                    i.month
                        .as_deref()
                        .map(|m| format!(" {m}"))
                        .unwrap_or_default(),
                    i.rows,
                    i.id.as_deref()
                        .map(|id| format!(", export {id}"))
                        .unwrap_or_default()
                );
                if let Some(d) = &i.detail {
                    println!("      {d}");
                }
            }
        }
        if let Some(id) = t.log_id {
            println!(
                "  {}.archive_log id {id}, run {}",
                t.archive_schema, s.run_id
            );
        }
        if s.dry_run {
            match (t.counted_rows, t.estimated_rows) {
                (Some(n), _) => println!("  rows to move: {n} (counted)"),
                (None, Some(n)) => println!("  {}", estimate_line(n, t.analyzed.as_ref(), tz)),
                (None, None) => {}
            }
            if !t.sql.is_empty() {
                println!("  SQL:");
                for stmt in &t.sql {
                    for line in format!("{stmt};").lines() {
                        println!("    {line}");
                    }
                }
                if t.mode == "rows" {
                    println!("    -- each batch repeats with the cursor after the last row moved (index value or ctid)");
                    println!("    -- until a pass from the start finds nothing; archive_log id 0 is this run's row");
                }
            }
        }
        if let Some(e) = &t.error {
            println!(
                "  {}: {e}",
                if t.status == TableStatus::Refused {
                    "REFUSED"
                } else {
                    "FAILED"
                }
            );
        }
        let status = serde_json::to_value(t.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("  status: {status}");
    }
    if s.dry_run {
        println!("dry run: nothing was changed");
    }
}

/// An estimate says it is one, and how old its statistics are.
fn estimate_line(n: i64, analyzed: Option<&Analyzed>, tz: &chrono_tz::Tz) -> String {
    let mut line = format!("estimated rows to move: ~{n} (planner estimate, not a count");
    if let Some(t) = analyzed.and_then(|a| a.oldest) {
        line.push_str(&format!(
            "; statistics from ANALYZE on {}",
            local_time(&t, tz)
        ));
    }
    if let Some(a) = analyzed.filter(|a| !a.never.is_empty()) {
        line.push_str(&format!(
            "; never analysed: {}, so it may be far off — run ANALYZE",
            a.never.join(", ")
        ));
    }
    line.push_str("; --exact counts)");
    line
}

pub fn check(r: &CheckReport) {
    for l in &r.lines {
        let status = match l.status {
            CheckStatus::Ok => "OK  ",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        };
        println!("{status} {:<20} {}", l.check, l.detail);
        if let Some(fix) = &l.fix {
            println!("     {:<20} fix: {fix}", "");
        }
    }
}

/// A dry run of a physical restore: what would go where, and the recovery settings.
pub fn restore_dry_run(r: &RestoreReport) {
    println!("would restore backup {} into {}", r.backup, r.pgdata);
    if let Some(d) = &r.dry_run {
        for (oid, dir) in &d.tablespaces {
            println!("tablespace {oid} into {}", dir.display());
        }
        for (k, v) in &d.settings {
            println!("{k} = {}", crate::ops::restore::quote(v));
        }
    }
}

/// `migrate`'s report, on stderr: stdout carries the migration's own output.
pub fn migrate(r: &crate::ops::migrate::MigrateReport) {
    eprintln!(
        "pre-migration backup of database {}: {}",
        r.database, r.backup_id
    );
    if r.command.success() {
        eprintln!("migration succeeded");
        return;
    }
    eprintln!("migration FAILED ({})", r.command.describe());
    let Some(rec) = &r.recovery else { return };
    let keep = r.on_failure == crate::ops::migrate::OnFailure::Keep;
    if keep {
        eprintln!("nothing was restored (--on-failure keep); to restore side by side, then swap:");
    }
    for s in &rec.steps {
        eprintln!("  {s}");
    }
    if let Some(f) = &rec.failed_database {
        eprintln!(
            "database {} is back as it was before the migration; the failed one is kept as {f}",
            r.database
        );
    }
    if let Some(e) = &rec.error {
        eprintln!(
            "RESTORE FAILED: {e}\nthe database {} is as the migration left it; backup {} holds the state before it",
            r.database, r.backup_id
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_for_people_are_in_the_display_zone_to_the_second() {
        let t = Utc.with_ymd_and_hms(2026, 12, 3, 22, 30, 15).unwrap()
            + chrono::Duration::milliseconds(250);
        assert_eq!(
            local_time(&t, &chrono_tz::Asia::Tokyo),
            "2026-12-04T07:30:15+09:00"
        );
        let analyzed = Analyzed {
            oldest: Some(t),
            never: vec![],
        };
        let line = estimate_line(10, Some(&analyzed), &chrono_tz::Europe::Berlin);
        assert!(
            line.contains("ANALYZE on 2026-12-03T23:30:15+01:00"),
            "{line}"
        );
    }
}
