//! WAL quantities as PostgreSQL defines them: LSNs, timelines, segment sizes and the
//! names of the files in `pg_wal` (segments, `.history`, `.backup`, `.partial`).
//! Everything is parsed once at the edge and printed in PostgreSQL's own format.

use std::fmt;
use std::str::FromStr;

/// A WAL file name or WAL header that is not what PostgreSQL writes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalNameError {
    #[error(
        "{0:?} is not a WAL file name (expected a segment like 000000010000000000000001, \
         a .history, .backup or .partial file)"
    )]
    NotAWalName(String),
    #[error("{0:?} is not an LSN (expected the form 16/B374D848)")]
    BadLsn(String),
    #[error("WAL segment size {0} is not a power of two between 1 MiB and 1 GiB")]
    BadSegmentSize(u64),
    #[error("not a WAL segment: {0}")]
    BadPageHeader(&'static str),
}

/// A position in the WAL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = WalNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WalNameError::BadLsn(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Stored as PostgreSQL prints it (`0/3000028`), readable by people and tools.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A timeline ID; printed as PostgreSQL prints it in file names (8 hex digits).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

/// The WAL segment size of a cluster (`initdb --wal-segsize`): a power of two
/// from 1 MiB to 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSize(u32);

impl SegmentSize {
    pub const DEFAULT: SegmentSize = SegmentSize(16 * 1024 * 1024);

    pub fn new(bytes: u64) -> Result<Self, WalNameError> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(SegmentSize(bytes as u32))
        } else {
            Err(WalNameError::BadSegmentSize(bytes))
        }
    }

    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// Segments per 4 GiB "xlogid", the unit of the middle 8 hex digits of a name.
    fn per_xlogid(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }
}

/// Stored as its number of bytes.
impl serde::Serialize for SegmentSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.bytes())
    }
}

impl<'de> serde::Deserialize<'de> for SegmentSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SegmentSize::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A cluster's system identifier (`pg_control`, every WAL segment's long
/// header): printed and stored in decimal, as PostgreSQL prints it, and as a
/// string in JSON, whose readers may round a u64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for SystemId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(SystemId)
            .map_err(|_| format!("{s:?} is not a system identifier (a decimal number)"))
    }
}

impl serde::Serialize for SystemId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SystemId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A segment's place in the WAL stream: its name's two 32-bit fields. For one
/// segment size they order like segment numbers, so positions compare
/// without knowing the size; only counting or stepping needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentPos {
    pub log: u32,
    pub seg: u32,
}

impl SegmentPos {
    /// PostgreSQL's XLogSegNo at this size.
    pub fn number(self, size: SegmentSize) -> u64 {
        u64::from(self.log) * size.per_xlogid() + u64::from(self.seg)
    }

    pub fn from_number(n: u64, size: SegmentSize) -> SegmentPos {
        SegmentPos {
            log: (n / size.per_xlogid()) as u32,
            seg: (n % size.per_xlogid()) as u32,
        }
    }

    /// Whether this position exists at `size` (its segment field is small enough).
    pub fn fits(self, size: SegmentSize) -> bool {
        u64::from(self.seg) < size.per_xlogid()
    }

    /// Whether this is certainly the position right after `prev`, whatever
    /// the segment size (across a 4 GiB unit only the size could tell).
    pub fn directly_follows(self, prev: SegmentPos) -> bool {
        self.log == prev.log && prev.seg.checked_add(1) == Some(self.seg)
    }
}

/// A WAL segment: timeline plus the two 32-bit halves of its name. Keeping the
/// name's own fields (rather than a segment number) means a name can be handled
/// without knowing the segment size; only stepping to the next one needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: TimelineId,
    pub log: u32,
    pub seg: u32,
}

impl Segment {
    /// The segment that follows this one on the same timeline.
    pub fn next(self, size: SegmentSize) -> Segment {
        let n = self.number(size) + 1;
        Segment::from_number(self.timeline, n, size)
    }

    /// PostgreSQL's XLogSegNo.
    pub fn number(self, size: SegmentSize) -> u64 {
        self.pos().number(size)
    }

    pub fn from_number(timeline: TimelineId, n: u64, size: SegmentSize) -> Segment {
        Segment::at(timeline, SegmentPos::from_number(n, size))
    }

    /// The segment holding `lsn`.
    pub fn containing(timeline: TimelineId, lsn: Lsn, size: SegmentSize) -> Segment {
        Segment::from_number(timeline, lsn.0 / size.bytes(), size)
    }

    /// Its place in the WAL stream.
    pub fn pos(self) -> SegmentPos {
        SegmentPos {
            log: self.log,
            seg: self.seg,
        }
    }

    /// The segment of `timeline` at `pos`.
    pub fn at(timeline: TimelineId, pos: SegmentPos) -> Segment {
        Segment {
            timeline,
            log: pos.log,
            seg: pos.seg,
        }
    }

    /// The LSN where this segment begins.
    pub fn start_lsn(self, size: SegmentSize) -> Lsn {
        Lsn(self.number(size) * size.bytes())
    }
}

/// Stored as its file name (`000000010000000000000002`).
impl serde::Serialize for Segment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Segment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse::<WalFileName>() {
            Ok(WalFileName::Segment(seg)) => Ok(seg),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is not a WAL segment name"
            ))),
        }
    }
}

impl FromStr for Segment {
    type Err = WalNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<WalFileName>()? {
            WalFileName::Segment(seg) => Ok(seg),
            _ => Err(WalNameError::NotAWalName(s.to_string())),
        }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

/// The name of a file that PostgreSQL archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileName {
    Segment(Segment),
    /// `00000002.history`
    History(TimelineId),
    /// `000000010000000000000002.00000028.backup`
    Backup(Segment, u32),
    /// `000000010000000000000002.partial`, written at promotion.
    Partial(Segment),
}

impl WalFileName {
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(s) | WalFileName::Backup(s, _) | WalFileName::Partial(s) => {
                s.timeline
            }
            WalFileName::History(t) => *t,
        }
    }

    /// The segment, when this names a whole segment (not a partial one).
    pub fn segment(&self) -> Option<Segment> {
        match self {
            WalFileName::Segment(s) => Some(*s),
            _ => None,
        }
    }
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn parse_segment(s: &str) -> Option<Segment> {
    if s.len() != 24 {
        return None;
    }
    Some(Segment {
        timeline: TimelineId(hex8(&s[0..8])?),
        log: hex8(&s[8..16])?,
        seg: hex8(&s[16..24])?,
    })
}

impl FromStr for WalFileName {
    type Err = WalNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = if let Some(seg) = parse_segment(s) {
            Some(WalFileName::Segment(seg))
        } else if let Some(tli) = s.strip_suffix(".history") {
            hex8(tli).map(|t| WalFileName::History(TimelineId(t)))
        } else if let Some(p) = s.strip_suffix(".partial") {
            parse_segment(p).map(WalFileName::Partial)
        } else if let Some(b) = s.strip_suffix(".backup") {
            b.split_once('.')
                .and_then(|(seg, off)| Some(WalFileName::Backup(parse_segment(seg)?, hex8(off)?)))
        } else {
            None
        };
        match parsed {
            // Timeline 0 does not exist; PostgreSQL starts at 1.
            Some(n) if n.timeline().0 != 0 => Ok(n),
            _ => Err(WalNameError::NotAWalName(s.to_string())),
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::History(t) => write!(f, "{t}.history"),
            WalFileName::Backup(s, off) => write!(f, "{s}.{off:08X}.backup"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
        }
    }
}

/// What cairn needs from the long page header at the start of every segment
/// (`XLogLongPageHeaderData` in PostgreSQL's `xlog_internal.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub timeline: TimelineId,
    pub page_addr: Lsn,
    pub system_identifier: u64,
    pub segment_size: SegmentSize,
}

/// Bytes of a segment's first page that [`LongPageHeader::parse`] reads.
pub const LONG_PAGE_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

impl LongPageHeader {
    /// Parses the header; the layout is little-endian on the platforms cairn runs on:
    /// magic u16, info u16, tli u32, pageaddr u64, rem_len u32, pad, sysid u64 @24,
    /// seg_size u32 @32, xlog_blcksz u32 @36.
    pub fn parse(b: &[u8]) -> Result<Self, WalNameError> {
        if b.len() < LONG_PAGE_HEADER_LEN {
            return Err(WalNameError::BadPageHeader(
                "shorter than a WAL page header",
            ));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        // PostgreSQL's WAL magic numbers are 0xD0xx..0xD1xx (0xD10D for 14, 0xD110 for 15,
        // 0xD113 for 16, 0xD116 for 17).
        if u16_at(0) & 0xFE00 != 0xD000 {
            return Err(WalNameError::BadPageHeader("no WAL page magic number"));
        }
        if u16_at(2) & XLP_LONG_HEADER == 0 {
            return Err(WalNameError::BadPageHeader(
                "first page lacks the long header",
            ));
        }
        let segment_size = SegmentSize::new(u64::from(u32_at(32)))?;
        Ok(LongPageHeader {
            timeline: TimelineId(u32_at(4)),
            page_addr: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            segment_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in [
            "000000010000000000000001",
            "0000000A00000001000000FF",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000002.partial",
        ] {
            assert_eq!(n.parse::<WalFileName>().unwrap().to_string(), n);
        }
    }

    #[test]
    fn rejects_non_wal_names() {
        for n in [
            "",
            "foo",
            "../../etc/passwd",
            "00000001000000000000000",
            "0000000100000000000000001",
            "000000010000000000000001/",
            "00000001000000000000000g",
            "000000010000000000000001.history",
            "00000000.history",
            "000000000000000000000001",
            "000000010000000000000002.28.backup",
            "RECOVERYXLOG",
        ] {
            assert!(n.parse::<WalFileName>().is_err(), "{n} accepted");
        }
    }

    #[test]
    fn next_segment_wraps_by_segment_size() {
        let s: WalFileName = "0000000100000000000000FF".parse().unwrap();
        let s = s.segment().unwrap();
        assert_eq!(
            s.next(SegmentSize::DEFAULT).to_string(),
            "000000010000000100000000"
        );
        let s64 = SegmentSize::new(64 << 20).unwrap();
        let s: Segment = Segment {
            timeline: TimelineId(1),
            log: 0,
            seg: 0x3F,
        };
        assert_eq!(s.next(s64).to_string(), "000000010000000100000000");
        let one_gib = SegmentSize::new(1 << 30).unwrap();
        let s = Segment {
            timeline: TimelineId(3),
            log: 7,
            seg: 3,
        };
        assert_eq!(s.next(one_gib).to_string(), "000000030000000800000000");
        assert!(SegmentSize::new(3 << 20).is_err());
        assert!(SegmentSize::new(512 << 10).is_err());
    }

    #[test]
    fn lsn_parse_and_segment() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.to_string(), "16/B374D848");
        let s = Segment::containing(TimelineId(1), l, SegmentSize::DEFAULT);
        assert_eq!(s.to_string(), "0000000100000016000000B3");
        assert!("16B374D848".parse::<Lsn>().is_err());
    }

    #[test]
    fn parses_long_page_header() {
        let mut b = vec![0u8; 40];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x0000_0001_0200_0000u64.to_le_bytes());
        b[24..32].copy_from_slice(&7_000_000_000_000u64.to_le_bytes());
        b[32..36].copy_from_slice(&(32u32 << 20).to_le_bytes());
        let h = LongPageHeader::parse(&b).unwrap();
        assert_eq!(h.timeline, TimelineId(2));
        assert_eq!(h.segment_size.bytes(), 32 << 20);
        assert_eq!(h.system_identifier, 7_000_000_000_000);
        assert_eq!(h.page_addr.to_string(), "1/2000000");
        b[2] = 0;
        assert!(LongPageHeader::parse(&b).is_err());
    }
}
