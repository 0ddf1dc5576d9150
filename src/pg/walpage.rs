//! WAL page headers, and the check that an archived segment's pages are the pages
//! PostgreSQL wrote for that segment.
//!
//! Every WAL page (`XLOG_BLCKSZ`, 8 KiB by default) starts with `XLogPageHeaderData`
//! (`access/xlog_internal.h`), little-endian on the platforms PostgreSQL archives from:
//!
//! ```text
//!  0 u16 xlp_magic     XLOG_PAGE_MAGIC of the major version
//!  2 u16 xlp_info      flags (XLP_ALL_FLAGS = 0x000F; XLP_LONG_HEADER = 0x0002)
//!  4 u32 xlp_tli       timeline of the first record on the page
//!  8 u64 xlp_pageaddr  LSN of the page's first byte
//! 16 u32 xlp_rem_len   bytes of a record continued from the previous page
//! ```
//!
//! A segment's first page has the long header (`XLogLongPageHeaderData`), which adds
//! `xlp_sysid` (u64 at 24), `xlp_seg_size` (u32 at 32) and `xlp_xlog_blcksz` (u32 at 36).
//!
//! The check reads a segment as a stream, one page at a time (memory: one page), and
//! fails on the first page that is not what PostgreSQL would accept where it lies: the
//! magic of the repository's major version, the page's own address (segment start +
//! offset), a timeline no later than the file name's and never going backwards (the
//! first segment of a new timeline begins with the parent's pages), the long header on
//! the first page only, with the repository's segment size and system identifier, and
//! exactly one segment of bytes. A segment switched early (`pg_switch_wal()`,
//! `archive_timeout`) ends in pages of zeros after its XLOG_SWITCH record (PostgreSQL
//! zeroes their headers too, for compression): once a zero page is seen, every later page
//! must be zeros. A `.partial` segment holds WAL only up to where its
//! timeline ended; the rest is zeros or a recycled file's stale pages, so its pages are
//! checked up to the first one that is not a valid page of the segment.

use std::io::Read;

use crate::pg::wal::major_of_page_magic;

const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_ALL_FLAGS: u16 = 0x000F;
/// `SizeOfXLogLongPHD`.
const LONG_HEADER: usize = 40;

/// `XLOG_PAGE_MAGIC` of PostgreSQL major `major`, if known.
pub fn magic_of_major(major: u32) -> Option<u16> {
    (0xD100..=0xD1FF).find(|m| major_of_page_magic(*m) == Some(major))
}

/// The fields of one page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: u32,
    pub page_addr: u64,
    pub rem_len: u32,
}

/// Parse the header at the start of `page` (at least 20 bytes).
pub fn page_header(page: &[u8]) -> PageHeader {
    let u16_at = |o: usize| u16::from_le_bytes(page[o..o + 2].try_into().expect("2 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().expect("4 bytes"));
    PageHeader {
        magic: u16_at(0),
        info: u16_at(2),
        tli: u32_at(4),
        page_addr: u64::from_le_bytes(page[8..16].try_into().expect("8 bytes")),
        rem_len: u32_at(16),
    }
}

/// What a segment must be.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The timeline in the file name.
    pub tli: u32,
    /// LSN of the segment's first byte.
    pub start: u64,
    pub seg_size: u64,
    /// `XLOG_PAGE_MAGIC` of the repository's major version; `None`: whatever known
    /// magic the first page has, the same on every page.
    pub magic: Option<u16>,
    pub system_identifier: Option<u64>,
    /// A `.partial` file: pages are checked up to the first that is not valid.
    pub partial: bool,
}

/// What a good segment held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub page_size: u32,
    /// Pages whose header was checked (for a partial file: the valid prefix).
    pub pages: u64,
    pub magic: u16,
    /// Timelines of the first and the last checked page.
    pub first_tli: u32,
    pub last_tli: u32,
}

/// Read the segment from `r` to its end, checking every page header against `expect`.
/// The error names the offset and what was wrong.
pub fn check_segment(r: &mut dyn Read, expect: &Expect) -> Result<Checked, String> {
    let mut first = [0u8; LONG_HEADER];
    let n = read_full(r, &mut first)?;
    if n < LONG_HEADER {
        return Err(format!(
            "{n} bytes long, the segment size is {}",
            expect.seg_size
        ));
    }
    let h = page_header(&first);
    let u32_at = |o: usize| u32::from_le_bytes(first[o..o + 4].try_into().expect("4 bytes"));
    let sysid = u64::from_le_bytes(first[24..32].try_into().expect("8 bytes"));
    let (seg_size, page_size) = (u32_at(32) as u64, u32_at(36));
    if first.iter().all(|b| *b == 0) {
        return Err("the first page is all zeros: not a WAL segment".into());
    }
    let magic = match expect.magic {
        Some(m) if h.magic != m => {
            return Err(format!(
                "page magic {:#06X} at offset 0 is not the repository's ({m:#06X}, PostgreSQL {})",
                h.magic,
                major_of_page_magic(m).map_or("?".into(), |v| v.to_string())
            ))
        }
        Some(m) => m,
        None if major_of_page_magic(h.magic).is_none() => {
            return Err(format!(
                "page magic {:#06X} at offset 0 is no PostgreSQL version's",
                h.magic
            ))
        }
        None => h.magic,
    };
    if h.info & XLP_LONG_HEADER == 0 || h.info & !XLP_ALL_FLAGS != 0 {
        return Err(format!(
            "the first page has no long header (xlp_info {:#06X})",
            h.info
        ));
    }
    if seg_size != expect.seg_size {
        return Err(format!(
            "the first page says the segment size is {seg_size}, the repository's is {}",
            expect.seg_size
        ));
    }
    if !page_size.is_power_of_two()
        || !(1024..=65536).contains(&page_size)
        || seg_size % page_size as u64 != 0
    {
        return Err(format!(
            "the first page says the page size is {page_size}: no PostgreSQL build has it"
        ));
    }
    if let Some(want) = expect.system_identifier.filter(|w| *w != sysid) {
        return Err(format!(
            "the first page carries system identifier {sysid}, the repository belongs to {want}"
        ));
    }
    page_checks(&h, 0, magic, expect, 0)?;

    let mut page = vec![0u8; page_size as usize];
    page[..LONG_HEADER].copy_from_slice(&first);
    let n = read_full(r, &mut page[LONG_HEADER..])?;
    let mut offset = (LONG_HEADER + n) as u64;
    if offset < page_size as u64 {
        return Err(short(offset, expect.seg_size));
    }
    let mut checked = Checked {
        page_size,
        pages: 1,
        magic,
        first_tli: h.tli,
        last_tli: h.tli,
    };
    // For a partial file: checking stopped at the first page that is not the segment's.
    let mut ended = false;
    // Where the zero pages after an XLOG_SWITCH record begin.
    let mut zeros_from: Option<u64> = None;
    loop {
        let n = read_full(r, &mut page)?;
        if n == 0 {
            break;
        }
        if offset + n as u64 > expect.seg_size {
            return Err(format!(
                "longer than the segment size {}: it goes on past it",
                expect.seg_size
            ));
        }
        if n < page.len() {
            return Err(short(offset + n as u64, expect.seg_size));
        }
        let zero = page.iter().all(|b| *b == 0);
        if zero && !expect.partial {
            zeros_from.get_or_insert(offset);
        } else if let (Some(z), false) = (zeros_from, expect.partial) {
            return Err(format!(
                "the page at offset {offset} holds data after zero pages from offset {z} \
                 (a segment ends in zeros only after an XLOG_SWITCH record, up to its end)"
            ));
        } else if !ended {
            let h = page_header(&page);
            let valid = if zero {
                Err(format!("the page at offset {offset} is all zeros"))
            } else {
                page_checks(&h, offset, magic, expect, checked.last_tli)
            };
            match valid {
                Ok(()) => {
                    checked.pages += 1;
                    checked.last_tli = h.tli;
                }
                Err(_) if expect.partial => ended = true,
                Err(e) => return Err(e),
            }
        }
        offset += n as u64;
    }
    if offset != expect.seg_size {
        return Err(short(offset, expect.seg_size));
    }
    Ok(checked)
}

fn short(len: u64, seg_size: u64) -> String {
    format!("{len} bytes long, the segment size is {seg_size}")
}

/// The checks every page shares: magic, flags, address, timeline.
fn page_checks(
    h: &PageHeader,
    offset: u64,
    magic: u16,
    expect: &Expect,
    previous_tli: u32,
) -> Result<(), String> {
    if h.magic != magic {
        return Err(format!(
            "page magic {:#06X} at offset {offset}, expected {magic:#06X}",
            h.magic
        ));
    }
    if h.info & !XLP_ALL_FLAGS != 0 || (offset > 0 && h.info & XLP_LONG_HEADER != 0) {
        return Err(format!(
            "invalid page flags {:#06X} at offset {offset}",
            h.info
        ));
    }
    let want = expect.start + offset;
    if h.page_addr != want {
        return Err(format!(
            "the page at offset {offset} has address {}, expected {} (the page belongs to another segment)",
            lsn(h.page_addr),
            lsn(want)
        ));
    }
    if h.tli == 0 || h.tli > expect.tli {
        return Err(format!(
            "the page at offset {offset} is on timeline {}, the file name says {}",
            h.tli, expect.tli
        ));
    }
    if h.tli < previous_tli {
        return Err(format!(
            "the page at offset {offset} is on timeline {}, after a page on timeline {previous_tli}",
            h.tli
        ));
    }
    Ok(())
}

fn lsn(v: u64) -> String {
    crate::pg::wal::Lsn(v).to_string()
}

/// Fill `buf` as far as the stream goes; returns the bytes read (less only at the end).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot be read: {e}")),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;
    const PAGE: usize = 8192;
    const SYSID: u64 = 7_000_000_000_000_000_001;

    /// A segment of `SEG` bytes at `start`, every page on `tli`, as PostgreSQL 15
    /// writes it.
    fn segment(start: u64, tli: u32) -> Vec<u8> {
        let mut v = vec![0u8; SEG as usize];
        for (i, page) in v.chunks_mut(PAGE).enumerate() {
            page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
            let info: u16 = if i == 0 { XLP_LONG_HEADER } else { 0 };
            page[2..4].copy_from_slice(&info.to_le_bytes());
            page[4..8].copy_from_slice(&tli.to_le_bytes());
            page[8..16].copy_from_slice(&(start + (i * PAGE) as u64).to_le_bytes());
            if i == 0 {
                page[24..32].copy_from_slice(&SYSID.to_le_bytes());
                page[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
                page[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
            page[100] = i as u8 | 1;
        }
        v
    }

    fn expect(start: u64, tli: u32) -> Expect {
        Expect {
            tli,
            start,
            seg_size: SEG,
            magic: magic_of_major(15),
            system_identifier: Some(SYSID),
            partial: false,
        }
    }

    fn check(bytes: &[u8], e: &Expect) -> Result<Checked, String> {
        check_segment(&mut std::io::Cursor::new(bytes), e)
    }

    #[test]
    fn magic_per_major() {
        assert_eq!(magic_of_major(15), Some(0xD110));
        assert_eq!(magic_of_major(16), Some(0xD113));
        assert_eq!(magic_of_major(17), Some(0xD116));
        assert_eq!(magic_of_major(18), Some(0xD118));
        assert_eq!(magic_of_major(9), None);
    }

    #[test]
    fn a_good_segment_passes() {
        let s = segment(3 * SEG, 1);
        let c = check(&s, &expect(3 * SEG, 1)).unwrap();
        assert_eq!(c.pages, SEG / PAGE as u64);
        assert_eq!((c.page_size, c.magic), (PAGE as u32, 0xD110));
        // Without a known version: the first page's magic, the same everywhere.
        let mut e = expect(3 * SEG, 1);
        e.magic = None;
        e.system_identifier = None;
        assert!(check(&s, &e).is_ok());
    }

    #[test]
    fn a_new_timelines_first_segment_may_begin_with_its_parents_pages() {
        let mut s = segment(3 * SEG, 2);
        for page in s.chunks_mut(PAGE).take(10) {
            page[4..8].copy_from_slice(&1u32.to_le_bytes());
        }
        assert!(check(&s, &expect(3 * SEG, 2)).is_ok());
        // Never backwards, never later than the name.
        let mut back = s.clone();
        back[20 * PAGE + 4..20 * PAGE + 8].copy_from_slice(&1u32.to_le_bytes());
        let e = check(&back, &expect(3 * SEG, 2)).unwrap_err();
        assert!(e.contains("after a page on timeline 2"), "{e}");
        let e = check(&s, &expect(3 * SEG, 1)).unwrap_err();
        assert!(e.contains("timeline 2, the file name says 1"), "{e}");
    }

    #[test]
    fn another_segments_content_fails_on_its_addresses() {
        let s = segment(4 * SEG, 1);
        let e = check(&s, &expect(3 * SEG, 1)).unwrap_err();
        assert!(e.contains("address 0/400000, expected 0/300000"), "{e}");
    }

    #[test]
    fn damaged_pages_fail_naming_the_offset() {
        let good = segment(3 * SEG, 1);
        let cases: [(usize, u8, &str); 5] = [
            (5 * PAGE, 0x01, "page magic 0xD111 at offset 40960"),
            (
                5 * PAGE + 2,
                0x40,
                "invalid page flags 0x0040 at offset 40960",
            ),
            (5 * PAGE + 2, 0x02, "invalid page flags 0x0002"),
            (5 * PAGE + 9, 0x01, "address 0/30A100, expected 0/30A000"),
            (5 * PAGE + 4, 0x04, "timeline 5, the file name says 1"),
        ];
        for (at, xor, want) in cases {
            let mut s = good.clone();
            s[at] ^= xor;
            let e = check(&s, &expect(3 * SEG, 1)).unwrap_err();
            assert!(e.contains(want), "{at}: {e}");
        }
    }

    #[test]
    fn first_page_identity_is_checked() {
        let good = segment(3 * SEG, 1);
        let mut e16 = expect(3 * SEG, 1);
        e16.magic = magic_of_major(16);
        let e = check(&good, &e16).unwrap_err();
        assert!(
            e.contains("not the repository's (0xD113, PostgreSQL 16)"),
            "{e}"
        );
        let mut other = expect(3 * SEG, 1);
        other.system_identifier = Some(1);
        let e = check(&good, &other).unwrap_err();
        assert!(e.contains("system identifier"), "{e}");
        let mut big = expect(3 * SEG, 1);
        big.seg_size = 2 * SEG;
        let e = check(&good, &big).unwrap_err();
        assert!(e.contains("segment size is 1048576"), "{e}");
        let mut no_long = good.clone();
        no_long[2] = 0;
        let e = check(&no_long, &expect(3 * SEG, 1)).unwrap_err();
        assert!(e.contains("no long header"), "{e}");
        let e = check(&vec![0u8; SEG as usize], &expect(3 * SEG, 1)).unwrap_err();
        assert!(e.contains("all zeros"), "{e}");
    }

    #[test]
    fn length_must_be_one_segment() {
        let s = segment(3 * SEG, 1);
        for len in [10, PAGE - 1, PAGE, SEG as usize - 1] {
            let e = check(&s[..len], &expect(3 * SEG, 1)).unwrap_err();
            assert!(e.contains("bytes long"), "{len}: {e}");
        }
        let mut long = s.clone();
        long.extend_from_slice(&[0; 10]);
        let e = check(&long, &expect(3 * SEG, 1)).unwrap_err();
        assert!(e.contains("goes on past it"), "{e}");
    }

    #[test]
    fn zero_pages_end_a_switched_segment_and_nothing_follows_them() {
        let mut s = segment(3 * SEG, 1);
        s[40 * PAGE..].fill(0);
        assert_eq!(check(&s, &expect(3 * SEG, 1)).unwrap().pages, 40);
        // A zeroed page inside the WAL.
        let mut hole = segment(3 * SEG, 1);
        hole[7 * PAGE..8 * PAGE].fill(0);
        let e = check(&hole, &expect(3 * SEG, 1)).unwrap_err();
        assert!(
            e.contains("offset 65536 holds data after zero pages from offset 57344"),
            "{e}"
        );
        // Stale pages after the zeros.
        let mut stale = s.clone();
        stale[50 * PAGE..].copy_from_slice(&segment(SEG, 1)[50 * PAGE..]);
        assert!(check(&stale, &expect(3 * SEG, 1)).is_err());
    }

    #[test]
    fn a_partial_file_is_checked_up_to_its_end() {
        let mut p = expect(3 * SEG, 1);
        p.partial = true;
        let mut s = segment(3 * SEG, 1);
        s[40 * PAGE..].fill(0);
        assert_eq!(check(&s, &p).unwrap().pages, 40);
        // Stale pages of a recycled file after the end are no error.
        let mut stale = segment(3 * SEG, 1);
        stale[40 * PAGE..].copy_from_slice(&segment(SEG, 1)[40 * PAGE..]);
        assert_eq!(check(&stale, &p).unwrap().pages, 40);
        // But the first page and the length still are.
        assert!(check(&s[..SEG as usize / 2], &p).is_err());
        let mut bad_first = s.clone();
        bad_first[9] ^= 1;
        assert!(check(&bad_first, &p).is_err());
    }
}
