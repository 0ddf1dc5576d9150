//! Incremental physical backups on disk: which files are block-structured, the pages of
//! one that changed since a reference LSN, the delta entry of a tar part that holds
//! them, and applying that entry to the copy a restore has made so far.
//!
//! A delta entry is a tar entry of type [`DELTA_TYPE`] (a vendor type: POSIX leaves
//! `A`–`Z` to implementations) named like the file it changes. Its contents:
//!
//! ```text
//! "BCDELTA1" | file size u64 | block size u32 | count u32 | count × block number u32
//!            | count × block
//! ```
//!
//! all little-endian, block numbers strictly increasing and inside the file size. A
//! restore sets the file to that size, then writes each block at its place: the newest
//! backup of a chain is applied last, so its version of a block wins.
//!
//! Everything in an entry is checked before anything is written: the repository is
//! untrusted input.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::pg::wal::Lsn;

/// What a restore of a chain (newest backup first) has written of each file so far, so
/// that every block is written once, by the newest backup that has it.
#[derive(Debug, Default)]
pub struct Claims(std::sync::Mutex<std::collections::HashMap<String, Claim>>);

/// What is written of one file.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// The whole file is written: older copies are skipped.
    pub whole: bool,
    /// The file's size, set by the newest backup that has it.
    pub size: u64,
    pub block_size: u32,
    /// Blocks written by delta entries (a bit per block).
    pub blocks: Vec<u64>,
}

impl Claim {
    pub fn has(&self, block: u64) -> bool {
        self.blocks
            .get((block / 64) as usize)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    fn set(&mut self, block: u64) {
        let i = (block / 64) as usize;
        if self.blocks.len() <= i {
            self.blocks.resize(i + 1, 0);
        }
        self.blocks[i] |= 1 << (block % 64);
    }
}

impl Claims {
    /// What is written of `name` (`None`: nothing yet).
    pub fn get(&self, name: &str) -> Option<Claim> {
        self.0.lock().expect("claims").get(name).cloned()
    }

    pub fn put(&self, name: &str, claim: Claim) {
        self.0
            .lock()
            .expect("claims")
            .insert(name.to_string(), claim);
    }
}

/// Apply a delta entry (its header read) in a restore of a chain, newest backup first:
/// the first backup to reach the file sets its size; each block is written only if no
/// newer backup wrote it. Returns the claim after this entry.
pub fn apply_claimed(
    r: &mut dyn Read,
    h: &DeltaHeader,
    file: &File,
    name: &str,
    claim: Option<Claim>,
) -> io::Result<Claim> {
    let mut claim = match claim {
        Some(c) => c,
        None => {
            file.set_len(h.file_size)?;
            Claim {
                whole: false,
                size: h.file_size,
                block_size: h.block_size,
                blocks: vec![],
            }
        }
    };
    let mut page = vec![0u8; h.block_size as usize];
    for b in &h.blocks {
        r.read_exact(&mut page)
            .map_err(|e| invalid(name, format!("block {b}: {e}")))?;
        let at = u64::from(*b) * u64::from(h.block_size);
        if claim.has(u64::from(*b)) || at >= claim.size || h.block_size != claim.block_size {
            continue;
        }
        let len = (claim.size - at).min(page.len() as u64) as usize;
        file.write_all_at(&page[..len], at)?;
        claim.set(u64::from(*b));
    }
    Ok(claim)
}

/// Write a whole copy of a file from an older backup of a chain into a file newer
/// backups wrote blocks of (`claim`): only the blocks they did not write, and nothing
/// beyond the size they set. Runs of such blocks are written together, `buf` at a time;
/// `written(bytes)` is called after each write (a durable restore syncs as it goes).
pub fn fill_claimed(
    r: &mut dyn Read,
    file: &File,
    claim: &Claim,
    buf: &mut [u8],
    written: &mut dyn FnMut(u64) -> io::Result<()>,
) -> io::Result<()> {
    let bs = u64::from(claim.block_size.max(1)) as usize;
    let chunk = (buf.len() / bs).max(1) * bs;
    let mut at = 0u64;
    loop {
        let n = crate::transfer::read_full(r, &mut buf[..chunk])?;
        if n == 0 {
            return Ok(());
        }
        // The runs of blocks of this chunk that no newer backup wrote.
        let mut i = 0;
        while i < n {
            let pos = at + i as u64;
            if pos >= claim.size {
                break;
            }
            if claim.has(pos / bs as u64) {
                i += bs;
                continue;
            }
            let mut j = i;
            while j < n && at + (j as u64) < claim.size && !claim.has((at + j as u64) / bs as u64) {
                j += bs;
            }
            let end = j.min(n).min((claim.size - at) as usize);
            file.write_all_at(&buf[i..end], pos)?;
            written((end - i) as u64)?;
            i = j;
        }
        at += n as u64;
    }
}

/// The tar type flag of a delta entry.
pub const DELTA_TYPE: u8 = b'I';
const MAGIC: &[u8; 8] = b"BCDELTA1";
/// Bytes before the block numbers.
const HEADER: usize = 8 + 8 + 4 + 4;

/// Is `name` (relative to PGDATA) the main fork of a relation, one of its 1 GiB
/// segments: `base/<db>/<relfilenode>[.<n>]`, `global/<relfilenode>[.<n>]` or
/// `pg_tblspc/<oid>/PG_…/<db>/<relfilenode>[.<n>]`?
///
/// Only main forks are copied block by block. The free space map is not WAL-logged at
/// all and clearing a visibility-map bit does not move the map page's LSN (the heap
/// record carries the change), so both are copied whole, as are init forks and every
/// other file (they are small next to the relations they describe).
pub fn is_block_file(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let relation = |file: &str| match file.split_once('.') {
        Some((node, seg)) => digits(node) && digits(seg),
        None => digits(file),
    };
    match parts.as_slice() {
        ["global", f] => relation(f),
        ["base", db, f] => digits(db) && relation(f),
        ["pg_tblspc", ts, v, db, f] => {
            digits(ts) && v.starts_with("PG_") && digits(db) && relation(f)
        }
        _ => false,
    }
}

/// The relation a block file (see [`is_block_file`]) is a segment of: (tablespace oid,
/// database oid, relfilenode, segment number). `base/` is tablespace 1663
/// (`pg_default`), `global/` 1664 (`pg_global`, database 0).
pub fn relation_of(name: &str) -> Option<(u32, u32, u32, u32)> {
    if !is_block_file(name) {
        return None;
    }
    let parts: Vec<&str> = name.split('/').collect();
    let (ts, db, file) = match parts.as_slice() {
        ["global", f] => (1664, 0, *f),
        ["base", db, f] => (1663, db.parse().ok()?, *f),
        ["pg_tblspc", ts, _, db, f] => (ts.parse().ok()?, db.parse().ok()?, *f),
        _ => return None,
    };
    let (node, seg) = match file.split_once('.') {
        Some((n, s)) => (n.parse().ok()?, s.parse().ok()?),
        None => (file.parse().ok()?, 0),
    };
    Some((ts, db, node, seg))
}

/// What WAL summaries say about one segment of a relation's main fork, as
/// [`ChangedBlocks::Listed`] wants it: the changed blocks of the whole relation
/// (`blocks`), its limit block, and the segment (`segno`, of `seg_blocks` blocks each).
pub fn segment_changes(
    blocks: &std::collections::BTreeSet<u32>,
    limit: Option<u32>,
    segno: u32,
    seg_blocks: u32,
    parent_size: u64,
) -> ChangedBlocks {
    let first = u64::from(segno) * u64::from(seg_blocks);
    let end = first + u64::from(seg_blocks);
    let in_segment = blocks
        .range(first.min(u64::from(u32::MAX)) as u32..)
        .take_while(|b| u64::from(**b) < end)
        .map(|b| (u64::from(*b) - first) as u32)
        .collect();
    let limit = limit.map(|l| {
        u64::from(l)
            .saturating_sub(first)
            .min(u64::from(seg_blocks)) as u32
    });
    ChangedBlocks::Listed {
        blocks: in_segment,
        limit,
        parent_size,
    }
}

/// How the blocks of a block-structured file that changed since its parent are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangedBlocks {
    /// Read every block and keep those whose page LSN is at or after `since` (the
    /// parent's start), those with LSN 0 (new or all-zero pages), and every block at or
    /// beyond `parent_size` (the size the parent recorded).
    PageLsn { since: Lsn, parent_size: u64 },
    /// The server's WAL summaries named these blocks (sorted), and the relation was
    /// truncated to `limit` blocks at some point of the range (`None`: never): every
    /// block from `limit` on and every block at or beyond `parent_size` is kept too.
    Listed {
        blocks: Vec<u32>,
        limit: Option<u32>,
        parent_size: u64,
    },
}

impl ChangedBlocks {
    pub fn parent_size(&self) -> u64 {
        match self {
            ChangedBlocks::PageLsn { parent_size, .. }
            | ChangedBlocks::Listed { parent_size, .. } => *parent_size,
        }
    }
}

/// What a backup's copy of one block-structured file holds: the blocks `how` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaPlan {
    pub how: ChangedBlocks,
    /// The server's block size (`block_size`).
    pub block_size: u32,
}

/// The LSN in a page's header (`pd_lsn`: two 32-bit halves, high first, each in the
/// server's byte order, which is little-endian on every platform this runs on).
pub fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The blocks of `file` (of `size` bytes, a multiple of `block_size`) to store.
pub fn changed_blocks(
    file: &File,
    size: u64,
    block_size: u32,
    how: &ChangedBlocks,
) -> io::Result<Vec<u32>> {
    let bs = u64::from(block_size);
    let nblocks = size / bs;
    let from_parent_end = how.parent_size().div_ceil(bs).min(nblocks);
    match how {
        ChangedBlocks::Listed { blocks, limit, .. } => {
            let cut = limit.map(u64::from).unwrap_or(nblocks).min(from_parent_end);
            let mut out: Vec<u32> = blocks
                .iter()
                .copied()
                .filter(|b| u64::from(*b) < cut)
                .collect();
            out.dedup();
            out.extend((cut..nblocks).map(|b| b as u32));
            Ok(out)
        }
        ChangedBlocks::PageLsn { since, .. } => {
            let mut out = Vec::new();
            // Read in large steps; the kernel reads ahead of a sequential reader.
            let per_read = (1usize << 20) / block_size as usize;
            let mut buf = vec![0u8; per_read * block_size as usize];
            let mut block = 0u64;
            while block < nblocks {
                let want = ((nblocks - block) as usize).min(per_read) * block_size as usize;
                let got = read_at_most(file, &mut buf[..want], block * bs)?;
                // A file that shrank while it was read: the rest are zeros in the tar
                // entry, as in a full copy, and replay restores what it needs.
                let whole = got / block_size as usize;
                for (i, page) in buf[..whole * block_size as usize]
                    .chunks_exact(block_size as usize)
                    .enumerate()
                {
                    let lsn = page_lsn(page);
                    let b = block + i as u64;
                    if lsn == 0 || lsn >= since.0 || b >= from_parent_end {
                        out.push(b as u32);
                    }
                }
                if whole * (block_size as usize) < want {
                    out.extend((block + whole as u64..nblocks).map(|b| b as u32));
                    break;
                }
                block += whole as u64;
            }
            Ok(out)
        }
    }
}

/// Read into `buf` from `offset` until it is full or the file ends.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The size of the delta entry that holds `count` blocks.
pub fn entry_size(count: usize, block_size: u32) -> u64 {
    (HEADER + 4 * count) as u64 + count as u64 * u64::from(block_size)
}

/// The contents of a delta entry: the header, then each block read from `file` now (a
/// block the file no longer has reads as zeros).
pub struct DeltaReader<'a> {
    file: &'a File,
    head: io::Cursor<Vec<u8>>,
    blocks: std::vec::IntoIter<u32>,
    block_size: u32,
    page: Vec<u8>,
    at: usize,
}

impl<'a> DeltaReader<'a> {
    pub fn new(file: &'a File, size: u64, block_size: u32, blocks: Vec<u32>) -> Self {
        let mut head = Vec::with_capacity(HEADER + 4 * blocks.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&size.to_le_bytes());
        head.extend_from_slice(&block_size.to_le_bytes());
        head.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
        for b in &blocks {
            head.extend_from_slice(&b.to_le_bytes());
        }
        DeltaReader {
            file,
            head: io::Cursor::new(head),
            blocks: blocks.into_iter(),
            block_size,
            page: vec![0; block_size as usize],
            at: block_size as usize,
        }
    }
}

impl Read for DeltaReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.head.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        if self.at == self.page.len() {
            let Some(b) = self.blocks.next() else {
                return Ok(0);
            };
            let got = read_at_most(
                self.file,
                &mut self.page,
                u64::from(b) * u64::from(self.block_size),
            )?;
            self.page[got..].fill(0);
            self.at = 0;
        }
        let n = buf.len().min(self.page.len() - self.at);
        buf[..n].copy_from_slice(&self.page[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A delta entry's header, checked against the entry's size.
#[derive(Debug, PartialEq, Eq)]
pub struct DeltaHeader {
    pub file_size: u64,
    pub block_size: u32,
    pub blocks: Vec<u32>,
}

fn invalid(name: &str, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("delta entry {name} in the backup is damaged: {why}"),
    )
}

/// Read and check the header of the delta entry `name` of `entry_size` bytes.
pub fn read_header(r: &mut dyn Read, name: &str, entry_size: u64) -> io::Result<DeltaHeader> {
    let mut head = [0u8; HEADER];
    r.read_exact(&mut head)
        .map_err(|e| invalid(name, format!("header: {e}")))?;
    if &head[..8] != MAGIC {
        return Err(invalid(name, "no delta header".into()));
    }
    let file_size = u64::from_le_bytes(head[8..16].try_into().expect("8"));
    let block_size = u32::from_le_bytes(head[16..20].try_into().expect("4"));
    let count = u32::from_le_bytes(head[20..24].try_into().expect("4")) as usize;
    if !(512..=(1 << 20)).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(invalid(name, format!("block size {block_size}")));
    }
    let nblocks = file_size.div_ceil(u64::from(block_size));
    if count as u64 > nblocks || entry_size != self::entry_size(count, block_size) {
        return Err(invalid(
            name,
            format!("{count} blocks of {block_size} bytes for a file of {file_size} bytes in an entry of {entry_size}"),
        ));
    }
    let mut raw = vec![0u8; 4 * count];
    r.read_exact(&mut raw)
        .map_err(|e| invalid(name, format!("block list: {e}")))?;
    let blocks: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    if blocks.windows(2).any(|w| w[0] >= w[1])
        || blocks.last().is_some_and(|b| u64::from(*b) >= nblocks)
    {
        return Err(invalid(
            name,
            "block numbers out of order or beyond the file's size".into(),
        ));
    }
    Ok(DeltaHeader {
        file_size,
        block_size,
        blocks,
    })
}

/// Apply a delta entry (its header already read) to `file`, the copy restored so far
/// (new and empty when the chain had no copy of it): set its size, then write each block.
pub fn apply(r: &mut dyn Read, h: &DeltaHeader, file: &File, name: &str) -> io::Result<()> {
    file.set_len(h.file_size)?;
    let mut page = vec![0u8; h.block_size as usize];
    for b in &h.blocks {
        r.read_exact(&mut page)
            .map_err(|e| invalid(name, format!("block {b}: {e}")))?;
        let at = u64::from(*b) * u64::from(h.block_size);
        // The last block of a file whose size is not a multiple of the block size.
        let len = (h.file_size - at).min(page.len() as u64) as usize;
        file.write_all_at(&page[..len], at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn main_forks_are_block_files_and_nothing_else_is() {
        for yes in [
            "base/1/1259",
            "base/16384/16385.3",
            "global/1262",
            "pg_tblspc/16390/PG_15_202209061/16384/16391",
        ] {
            assert!(is_block_file(yes), "{yes}");
        }
        for no in [
            "base/1/1259_fsm",
            "base/1/1259_vm",
            "base/1/16400_init",
            "base/1/PG_VERSION",
            "base/1/pg_filenode.map",
            "global/pg_control",
            "pg_xact/0000",
            "postgresql.conf",
            "base/16384",
            "base/x/123",
            "base/1/12.",
            "pg_tblspc/16390/16384/16391",
        ] {
            assert!(!is_block_file(no), "{no}");
        }
    }

    fn page(lsn: u64, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; 8192];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p
    }

    #[test]
    fn relations_and_their_segments_from_names() {
        assert_eq!(relation_of("base/5/16384"), Some((1663, 5, 16384, 0)));
        assert_eq!(relation_of("base/5/16384.2"), Some((1663, 5, 16384, 2)));
        assert_eq!(relation_of("global/1262"), Some((1664, 0, 1262, 0)));
        assert_eq!(
            relation_of("pg_tblspc/16390/PG_17_1/5/16391.1"),
            Some((16390, 5, 16391, 1))
        );
        assert_eq!(relation_of("base/5/16384_vm"), None);
        // Blocks 5 and 131075 of a relation with 131072-block segments; truncated to 131080.
        let blocks = [5u32, 131075].into_iter().collect();
        assert_eq!(
            segment_changes(&blocks, Some(131080), 1, 131072, 0),
            ChangedBlocks::Listed {
                blocks: vec![3],
                limit: Some(8),
                parent_size: 0
            }
        );
        assert_eq!(
            segment_changes(&blocks, Some(10), 1, 131072, 0),
            ChangedBlocks::Listed {
                blocks: vec![3],
                limit: Some(0),
                parent_size: 0
            }
        );
        assert_eq!(
            segment_changes(&blocks, None, 0, 131072, 7),
            ChangedBlocks::Listed {
                blocks: vec![5],
                limit: None,
                parent_size: 7
            }
        );
    }

    #[test]
    fn pages_changed_since_the_parent_new_pages_and_the_grown_tail_are_kept() {
        let mut f = tempfile::tempfile().unwrap();
        // 0: old, 1: changed, 2: all zero (LSN 0), 3: old, 4: old but beyond the
        // parent's size.
        for p in [
            page(0x1_0000_0100, 1),
            page(0x2_0000_0000, 2),
            vec![0; 8192],
            page(0x1_0000_0000, 3),
            page(0x1_0000_0000, 4),
        ] {
            f.write_all(&p).unwrap();
        }
        let how = ChangedBlocks::PageLsn {
            since: Lsn(0x1_ffff_0000),
            parent_size: 4 * 8192,
        };
        assert_eq!(
            changed_blocks(&f, 5 * 8192, 8192, &how).unwrap(),
            vec![1, 2, 4]
        );
        let listed = ChangedBlocks::Listed {
            blocks: vec![0, 3, 9],
            limit: Some(2),
            parent_size: 4 * 8192,
        };
        assert_eq!(
            changed_blocks(&f, 5 * 8192, 8192, &listed).unwrap(),
            vec![0, 2, 3, 4]
        );
    }

    #[test]
    fn a_delta_round_trips_onto_the_parents_copy() {
        let mut live = tempfile::tempfile().unwrap();
        for i in 0..4u8 {
            live.write_all(&page(u64::from(i) + 1, i)).unwrap();
        }
        let mut entry = vec![];
        DeltaReader::new(&live, 3 * 8192, 8192, vec![0, 2])
            .read_to_end(&mut entry)
            .unwrap();
        assert_eq!(entry.len() as u64, entry_size(2, 8192));

        // The parent's copy: four pages of 9s; the delta shrinks it to 3 and rewrites 0, 2.
        let restored = tempfile::tempfile().unwrap();
        restored.write_all_at(&vec![9u8; 4 * 8192], 0).unwrap();
        let mut r = &entry[..];
        let h = read_header(&mut r, "base/1/2", entry.len() as u64).unwrap();
        apply(&mut r, &h, &restored, "base/1/2").unwrap();
        let mut out = vec![];
        (&restored).read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 3 * 8192);
        assert_eq!(out[..8192], page(1, 0)[..]);
        assert!(out[8192..2 * 8192].iter().all(|b| *b == 9));
        assert_eq!(out[2 * 8192..], page(3, 2)[..]);
    }

    /// A chain restored newest first (each block written once, by the newest backup
    /// that has it) gives the same file as applying each backup in turn, oldest first:
    /// a full copy of 4 pages, then 1 and 3 changed, then 1 changed again and the file
    /// truncated to 3 pages.
    #[test]
    fn newest_first_equals_oldest_first() {
        let delta = |size: u64, blocks: &[(u32, u8)]| {
            let live = tempfile::tempfile().unwrap();
            for (b, fill) in blocks {
                live.write_all_at(&page(u64::from(*fill), *fill), u64::from(*b) * 8192)
                    .unwrap();
            }
            live.set_len(size).unwrap();
            let mut e = vec![];
            DeltaReader::new(&live, size, 8192, blocks.iter().map(|(b, _)| *b).collect())
                .read_to_end(&mut e)
                .unwrap();
            e
        };
        let full: Vec<u8> = (0..4u8).flat_map(|i| page(u64::from(i), i)).collect();
        let d1 = delta(4 * 8192, &[(1, 11), (3, 13)]);
        let d2 = delta(3 * 8192, &[(1, 21)]);

        let oldest_first = tempfile::tempfile().unwrap();
        oldest_first.write_all_at(&full, 0).unwrap();
        for d in [&d1, &d2] {
            let mut r = &d[..];
            let h = read_header(&mut r, "f", d.len() as u64).unwrap();
            apply(&mut r, &h, &oldest_first, "f").unwrap();
        }

        let newest_first = tempfile::tempfile().unwrap();
        let mut claim = None;
        for d in [&d2, &d1] {
            let mut r = &d[..];
            let h = read_header(&mut r, "f", d.len() as u64).unwrap();
            claim = Some(apply_claimed(&mut r, &h, &newest_first, "f", claim).unwrap());
        }
        let mut buf = vec![0u8; 3 * 8192];
        fill_claimed(
            &mut &full[..],
            &newest_first,
            claim.as_ref().unwrap(),
            &mut buf,
            &mut |_| Ok(()),
        )
        .unwrap();

        let read = |f: &File| {
            let mut out = vec![];
            let mut f = f.try_clone().unwrap();
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut out).unwrap();
            out
        };
        let (a, b) = (read(&oldest_first), read(&newest_first));
        assert_eq!(a.len(), 3 * 8192);
        assert_eq!(a[8192..2 * 8192], page(21, 21)[..]);
        assert!(a == b, "newest first differs from oldest first");
    }

    #[test]
    fn damaged_delta_headers_are_refused_before_anything_is_written() {
        let live = tempfile::tempfile().unwrap();
        live.write_all_at(&vec![1u8; 2 * 8192], 0).unwrap();
        let mut good = vec![];
        DeltaReader::new(&live, 2 * 8192, 8192, vec![0, 1])
            .read_to_end(&mut good)
            .unwrap();
        let n = good.len() as u64;
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let mut beyond = good.clone();
        beyond[28..32].copy_from_slice(&7u32.to_le_bytes());
        let mut unordered = good.clone();
        unordered[24..28].copy_from_slice(&1u32.to_le_bytes());
        let mut too_many = good.clone();
        too_many[20..24].copy_from_slice(&3u32.to_le_bytes());
        for (what, bytes, size) in [
            ("magic", bad_magic, n),
            ("beyond the end", beyond, n),
            ("order", unordered, n),
            ("count", too_many, n),
            ("entry size", good.clone(), n + 1),
        ] {
            let e = read_header(&mut &bytes[..], "base/1/2", size).unwrap_err();
            assert!(
                e.to_string().contains("base/1/2 in the backup is damaged"),
                "{what}: {e}"
            );
        }
    }
}
