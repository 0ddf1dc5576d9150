//! Builders of the manifests, WAL inventories and dumps that unit tests are made of.

use chrono::{DateTime, Utc};

use crate::codec::{Algorithm, Codec};
use crate::manifest::{
    BackupKind, DatabaseDump, Manifest, Outcome, PhysicalInfo, TableRows, Verification, FORMAT,
};
use crate::pg::wal::{parse_history, Lsn, Segment};
use crate::recovery::inventory::WalInventory;
use crate::repo::{layout, ObjectMeta};

/// The WAL segment size of every fixture (PostgreSQL's default, 16 MiB).
pub(crate) const SEG: u64 = 16 << 20;

/// A manifest of `kind` from `start` to `stop` on host `h`, cluster `main`, PostgreSQL
/// 15: no objects, no physical or logical part, no restore point, not verified.
pub(crate) fn manifest(
    id: &str,
    kind: BackupKind,
    start: DateTime<Utc>,
    stop: DateTime<Utc>,
) -> Manifest {
    Manifest {
        format: FORMAT,
        id: id.into(),
        kind,
        label: None,
        host: "h".into(),
        cluster: "main".into(),
        pg_version: "15".into(),
        pg_version_num: 150000,
        system_identifier: "1".into(),
        start_time: start,
        stop_time: stop,
        compression: Codec::NONE,
        objects: vec![],
        physical: None,
        logical: None,
        restore_point: None,
        verification: None,
    }
}

/// The physical part of a backup on `tli` starting in segment `start_seg` and stopping in
/// `stop_seg`: no files, no tablespaces, empty WAL names and paths.
pub(crate) fn physical_info(tli: u32, start_seg: u64, stop_seg: u64) -> PhysicalInfo {
    PhysicalInfo {
        timeline: tli,
        start_lsn: Lsn(start_seg * SEG + 40),
        stop_lsn: Lsn(stop_seg * SEG + 100),
        start_wal: String::new(),
        stop_wal: String::new(),
        wal_segment_size: SEG,
        pgdata: String::new(),
        tablespaces: vec![],
        backup_label: String::new(),
        tablespace_map: None,
        files: 0,
        config_file: None,
        file_list: None,
        incremental: None,
    }
}

/// A verification at `time` with `outcome`, nothing checked and no failures.
pub(crate) fn verification(
    time: DateTime<Utc>,
    outcome: Outcome,
    duration_secs: f64,
) -> Verification {
    Verification {
        time,
        outcome,
        duration_secs,
        checked: vec![],
        failures: vec![],
        scratch_bytes: 0,
    }
}

/// A WAL inventory of zstd segments `(timeline, segment number)` of 100 bytes, each last
/// modified at `archived(segno)`, and `(timeline, history text)` history files.
pub(crate) fn wal_inventory(
    segs: &[(u32, u64)],
    histories: &[(u32, &str)],
    archived: impl Fn(u64) -> Option<DateTime<Utc>>,
) -> WalInventory {
    let objects: Vec<ObjectMeta> = segs
        .iter()
        .map(|&(tli, segno)| ObjectMeta {
            key: layout::wal_key(&Segment { tli, segno }.name(SEG), Algorithm::Zstd).unwrap(),
            size: 100,
            last_modified: archived(segno),
            metadata: Default::default(),
        })
        .collect();
    let h = histories
        .iter()
        .map(|(tli, text)| (*tli, parse_history(text).unwrap()))
        .collect();
    WalInventory::from_listing(&objects, SEG, h)
}

/// The dump of database `name` in object `db-<name>.dump.zst`, with `tables` and nothing
/// else recorded.
pub(crate) fn database_dump(name: &str, size_bytes: i64, tables: Vec<TableRows>) -> DatabaseDump {
    DatabaseDump {
        name: name.into(),
        object: format!("db-{name}.dump.zst"),
        size_bytes,
        tables,
        toc_counts: Default::default(),
        toc_object: None,
        large_objects: 0,
        encoding: None,
        collate: None,
        ctype: None,
    }
}
