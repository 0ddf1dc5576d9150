//! LSN and WAL file-name arithmetic, timeline history files, and the identity fields in
//! WAL segment headers and `pg_control`.
//!
//! A segment name is `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the segment number split
//! into "log" (`segno / segments_per_xlogid`) and "seg" (`segno % segments_per_xlogid`),
//! where `segments_per_xlogid = 2^32 / wal_segment_size`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default `wal_segment_size`.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A WAL location (`pg_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an LSN; write it as e.g. 0/3000028"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| format!("{s:?} is not an LSN"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| format!("{s:?} is not an LSN"))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One WAL segment: timeline and segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub tli: u32,
    pub segno: u64,
}

/// Whether `seg_size` is a WAL segment size PostgreSQL allows (a power of two, 1 MiB to
/// 1 GiB).
pub fn valid_segment_size(seg_size: u64) -> bool {
    seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size)
}

fn segments_per_xlogid(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

impl Segment {
    /// The segment containing `lsn` on timeline `tli`.
    pub fn containing(tli: u32, lsn: Lsn, seg_size: u64) -> Segment {
        Segment {
            tli,
            segno: lsn.0 / seg_size,
        }
    }

    /// Parse a 24-hex-digit segment name.
    pub fn parse(name: &str, seg_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per = segments_per_xlogid(seg_size);
        if seg >= per {
            return None;
        }
        Some(Segment {
            tli,
            segno: log * per + seg,
        })
    }

    pub fn name(&self, seg_size: u64) -> String {
        let per = segments_per_xlogid(seg_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.tli,
            self.segno / per,
            self.segno % per
        )
    }

    /// The LSN at which this segment starts.
    pub fn start_lsn(&self, seg_size: u64) -> Lsn {
        Lsn(self.segno * seg_size)
    }

    pub fn next(&self) -> Segment {
        Segment {
            tli: self.tli,
            segno: self.segno + 1,
        }
    }
}

/// What kind of file PostgreSQL hands to archive_command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// `000000010000000000000001`
    Segment,
    /// `000000010000000000000001.partial`
    Partial,
    /// `000000010000000000000001.00000028.backup`
    BackupHistory,
    /// `00000002.history`
    TimelineHistory,
}

/// Classify a WAL file name, or `None` if it is not one PostgreSQL archives.
pub fn classify(name: &str) -> Option<WalFileKind> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(name, 24) {
        return Some(WalFileKind::Segment);
    }
    if let Some(base) = name.strip_suffix(".partial") {
        return hex(base, 24).then_some(WalFileKind::Partial);
    }
    if let Some(base) = name.strip_suffix(".backup") {
        let (seg, off) = base.split_once('.')?;
        return (hex(seg, 24) && hex(off, 8)).then_some(WalFileKind::BackupHistory);
    }
    if let Some(base) = name.strip_suffix(".history") {
        return hex(base, 8).then_some(WalFileKind::TimelineHistory);
    }
    None
}

/// The timeline a history file name is for (`00000002.history` → 2).
pub fn history_timeline(name: &str) -> Option<u32> {
    let base = name.strip_suffix(".history")?;
    if base.len() != 8 {
        return None;
    }
    u32::from_str_radix(base, 16).ok()
}

pub fn history_file_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

/// One line of a timeline history file: timeline `parent` ended at `switch_lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: u32,
    pub switch_lsn: Lsn,
    pub reason: String,
}

/// Parse a timeline history file (`parentTLI <tab> switchpoint <tab> reason` lines).
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let tli = parts
            .next()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| format!("line {}: bad timeline id", i + 1))?;
        let lsn = parts
            .next()
            .ok_or_else(|| format!("line {}: missing switch point", i + 1))?
            .parse::<Lsn>()
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(HistoryEntry {
            parent: tli,
            switch_lsn: lsn,
            reason: parts.next().unwrap_or("").trim().to_string(),
        });
    }
    Ok(out)
}

/// Identity fields of a WAL segment's first page (XLogLongPageHeaderData).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `XLOG_PAGE_MAGIC`: changes with every major version's WAL format.
    pub magic: u16,
    pub tli: u32,
    pub page_addr: Lsn,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

const XLP_LONG_HEADER: u16 = 0x0002;

/// Read the long page header at the start of a segment, or `None` if `bytes` does not
/// start with one (a zero-filled or foreign file).
pub fn segment_header(bytes: &[u8]) -> Option<SegmentHeader> {
    if bytes.len() < 40 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let magic = u16_at(0);
    let info = u16_at(2);
    if magic & 0xFF00 != 0xD100 || info & XLP_LONG_HEADER == 0 {
        return None;
    }
    let seg_size = u32_at(32);
    if !valid_segment_size(seg_size as u64) {
        return None;
    }
    Some(SegmentHeader {
        magic,
        tli: u32_at(4),
        page_addr: Lsn(u64_at(8)),
        system_identifier: u64_at(24),
        segment_size: seg_size,
        block_size: u32_at(36),
    })
}

/// The PostgreSQL major version whose WAL carries page magic `magic`
/// (`XLOG_PAGE_MAGIC` in `access/xlog_internal.h`), if known.
pub fn major_of_page_magic(magic: u16) -> Option<u32> {
    Some(match magic {
        0xD101 => 12,
        0xD106 => 13,
        0xD10D => 14,
        0xD110 => 15,
        0xD113 => 16,
        0xD116 => 17,
        0xD118 => 18,
        _ => return None,
    })
}

/// The database system identifier from `global/pg_control` (its first field).
pub fn control_system_identifier(pgdata: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(pgdata.join("global/pg_control"))?;
    let mut buf = [0u8; 8];
    f.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

/// Where the CRC of `ControlFileData` lies, by `pg_control_version` (the `u32` at byte
/// 8): `offsetof(ControlFileData, crc)`, the CRC covering every byte before it.
/// 1300 is PostgreSQL 13 to 16 (checked against a PostgreSQL 15 cluster's file).
const CONTROL_CRC_OFFSETS: &[(u32, usize)] = &[(1300, 288)];

/// `PG_CONTROL_MAX_SAFE_SIZE`: PostgreSQL keeps `ControlFileData` within this many bytes
/// (written in one sector), so its CRC lies within them whatever the version.
const CONTROL_MAX_SAFE_SIZE: usize = 512;

/// Whether a `global/pg_control` read whole is intact: its CRC-32C (over the bytes of
/// `ControlFileData` before the CRC field) matches. For a `pg_control_version` not in
/// [`CONTROL_CRC_OFFSETS`] any 4-byte-aligned position within the first 512 bytes is
/// accepted where the CRC of the bytes before it is stored (a torn read matches at none).
/// The error says what was wrong.
pub fn check_control_crc(data: &[u8]) -> Result<(), String> {
    if data.len() < 16 {
        return Err(format!("{} bytes, too short", data.len()));
    }
    let crc_at = |at: usize| {
        at + 4 <= data.len()
            && crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &data[..at]) as u32
                == u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
    };
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    let ok = match CONTROL_CRC_OFFSETS.iter().find(|(v, _)| *v == version) {
        Some(&(_, at)) => crc_at(at),
        None => (16..=CONTROL_MAX_SAFE_SIZE - 4).step_by(4).any(crc_at),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("pg_control_version {version}: CRC mismatch"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_magic_names_the_major_version() {
        assert_eq!(major_of_page_magic(0xD110), Some(15));
        assert_eq!(major_of_page_magic(0xD10D), Some(14));
        assert_eq!(major_of_page_magic(0xD1FF), None);
        let mut page = vec![0u8; 64];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        let h = segment_header(&page).unwrap();
        assert_eq!(major_of_page_magic(h.magic), Some(15));
    }

    const SEG: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn lsn_round_trips() {
        for s in ["0/0", "0/3000028", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap().0, 1 << 32);
        assert!("3000028".parse::<Lsn>().is_err());
        assert!("0/XYZ".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names_match_postgres() {
        // pg_walfile_name('16/B374D848') on timeline 1 = 0000000100000016000000B3
        let s = Segment::containing(1, "16/B374D848".parse().unwrap(), SEG);
        assert_eq!(s.name(SEG), "0000000100000016000000B3");
        assert_eq!(Segment::parse("0000000100000016000000B3", SEG), Some(s));
        // Segment 0xFF of log 0 is followed by segment 0 of log 1.
        let last = Segment::parse("0000000200000000000000FF", SEG).unwrap();
        assert_eq!(last.next().name(SEG), "000000020000000100000000");
        assert_eq!(last.start_lsn(SEG).to_string(), "0/FF000000");
    }

    #[test]
    fn other_segment_sizes() {
        let one_gb = 1u64 << 30;
        let s = Segment::containing(3, "5/C0000000".parse().unwrap(), one_gb);
        assert_eq!(s.name(one_gb), "000000030000000500000003");
        assert_eq!(Segment::parse("000000030000000500000004", one_gb), None);
        let one_mb = 1u64 << 20;
        let s = Segment::containing(1, "0/FFF00000".parse().unwrap(), one_mb);
        assert_eq!(s.name(one_mb), "000000010000000000000FFF");
    }

    #[test]
    fn classify_wal_files() {
        use WalFileKind::*;
        let cases = [
            ("000000010000000000000001", Some(Segment)),
            ("000000010000000000000001.partial", Some(Partial)),
            (
                "000000010000000000000002.00000028.backup",
                Some(BackupHistory),
            ),
            ("00000002.history", Some(TimelineHistory)),
            ("00000002.history.tmp", None),
            ("RECOVERYHISTORY", None),
            ("00000001000000000000000", None),
            ("archive_status", None),
        ];
        for (name, want) in cases {
            assert_eq!(classify(name), want, "{name}");
        }
        assert_eq!(history_timeline("0000000A.history"), Some(10));
        assert_eq!(history_file_name(10), "0000000A.history");
    }

    #[test]
    fn history_files_parse() {
        let text = "1\t0/3000090\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-11-22 10:00:00+00\n";
        let h = parse_history(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].parent, 2);
        assert_eq!(h[1].switch_lsn.to_string(), "0/5000000");
        assert!(parse_history("x\t0/1\n").is_err());
    }

    #[test]
    fn segment_header_fields() {
        let mut page = vec![0u8; 8192];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[8..16].copy_from_slice(&0x3000000u64.to_le_bytes());
        page[24..32].copy_from_slice(&7312345678901234567u64.to_le_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let h = segment_header(&page).unwrap();
        assert_eq!(h.system_identifier, 7312345678901234567);
        assert_eq!(h.tli, 1);
        assert_eq!(h.segment_size, 16 << 20);
        assert!(segment_header(&vec![0u8; 8192]).is_none());
    }

    /// ControlFileData as PostgreSQL 13–16 lays it out, with `crc` at 288.
    fn control(version: u32, crc_at: usize) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[..8].copy_from_slice(&7_300_000_000_000_000_001u64.to_le_bytes());
        b[8..12].copy_from_slice(&version.to_le_bytes());
        for (i, x) in b[12..crc_at].iter_mut().enumerate() {
            *x = (i * 7 % 251) as u8;
        }
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &b[..crc_at]) as u32;
        b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn pg_control_crc() {
        // CRC-32C check value (RFC 3720 B.4: 32 bytes of zeros).
        assert_eq!(
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &[0u8; 32]),
            0x8A91_36AA
        );
        assert_eq!(
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b"123456789"),
            0xE306_9283
        );
        let good = control(1300, 288);
        assert_eq!(check_control_crc(&good), Ok(()));
        for at in [0, 9, 100, 287, 289] {
            let mut torn = good.clone();
            torn[at] ^= 0x01;
            assert!(check_control_crc(&torn).is_err(), "byte {at}");
        }
        // A format not in the table: the CRC is found where it is.
        let other = control(1800, 304);
        assert_eq!(check_control_crc(&other), Ok(()));
        let mut torn = other.clone();
        torn[200] ^= 0x80;
        assert!(check_control_crc(&torn).is_err());
        // Version 1300 with the CRC anywhere else is not accepted.
        assert!(check_control_crc(&control(1300, 304)).is_err());
        assert!(check_control_crc(&good[..10]).is_err());
    }
}
