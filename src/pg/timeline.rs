//! Timeline history files (`0000000N.history`): which timelines a timeline
//! descends from and where it left each of them. Retention reads them to know
//! which backups can still recover into which timelines. Pure: the caller
//! fetches the text.
//!
//! The format is PostgreSQL's (`readTimeLineHistory` in
//! `src/backend/access/transam/timeline.c`): one line per ancestor,
//! `<parent TLI>\t<switch point X/Y>\t<free-text reason>`, oldest first; blank
//! lines and lines whose first non-blank character is `#` are skipped; the
//! reason is ignored. Like PostgreSQL, fields are separated by any whitespace,
//! parent TLIs must increase, and each must be below the file's own timeline.
//! PostgreSQL does not check that switch points increase, so neither does this.

use crate::pg::wal::{Lsn, TimelineId, WalFileName};

/// A history file that PostgreSQL would refuse to read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimelineError {
    #[error("{file}: line {line} ({text:?}): expected a numeric parent timeline ID")]
    BadTimeline {
        file: String,
        line: usize,
        text: String,
    },
    #[error(
        "{file}: line {line} ({text:?}): expected a switch point like 0/3000000 after the timeline ID"
    )]
    BadSwitchpoint {
        file: String,
        line: usize,
        text: String,
    },
    #[error(
        "{file}: line {line} ({text:?}): timeline IDs must increase (the previous entry is timeline {previous})"
    )]
    NotIncreasing {
        file: String,
        line: usize,
        text: String,
        previous: u32,
    },
    #[error(
        "{file}: line {line} ({text:?}): parent timeline {parent} is not below the file's own timeline {timeline}"
    )]
    NotBelow {
        file: String,
        line: usize,
        text: String,
        parent: u32,
        timeline: u32,
    },
}

/// One ancestor: the history left timeline `parent` at `switchpoint` (WAL
/// before it is shared with the parent; from it on the two differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    pub switchpoint: Lsn,
}

/// The history of `timeline`: its ancestors, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    pub timeline: TimelineId,
    pub entries: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parses the text of `timeline`'s history file.
    pub fn parse(timeline: TimelineId, text: &str) -> Result<TimelineHistory, TimelineError> {
        let file = WalFileName::History(timeline).to_string();
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Long reasons are shortened in messages; the file name and line
            // number locate the rest.
            let shown: String = line.chars().take(80).collect();
            let mut fields = line.split_whitespace();
            let parent = fields
                .next()
                .filter(|f| f.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|f| f.parse::<u32>().ok())
                .filter(|&t| t != 0)
                .ok_or_else(|| TimelineError::BadTimeline {
                    file: file.clone(),
                    line: n + 1,
                    text: shown.clone(),
                })?;
            let switchpoint = fields
                .next()
                .and_then(|f| f.parse::<Lsn>().ok())
                .ok_or_else(|| TimelineError::BadSwitchpoint {
                    file: file.clone(),
                    line: n + 1,
                    text: shown.clone(),
                })?;
            if let Some(previous) = entries.last().map(|e| e.parent.0)
                && parent <= previous
            {
                return Err(TimelineError::NotIncreasing {
                    file,
                    line: n + 1,
                    text: shown,
                    previous,
                });
            }
            if parent >= timeline.0 {
                return Err(TimelineError::NotBelow {
                    file,
                    line: n + 1,
                    text: shown,
                    parent,
                    timeline: timeline.0,
                });
            }
            entries.push(HistoryEntry {
                parent: TimelineId(parent),
                switchpoint,
            });
        }
        Ok(TimelineHistory { timeline, entries })
    }

    /// Each ancestor timeline with the LSN where the history left it, oldest first.
    pub fn ancestors(&self) -> Vec<(TimelineId, Lsn)> {
        self.entries
            .iter()
            .map(|e| (e.parent, e.switchpoint))
            .collect()
    }

    /// Where this history leaves `tli`, if `tli` is one of its ancestors.
    pub fn switchpoint(&self, tli: TimelineId) -> Option<Lsn> {
        self.entries
            .iter()
            .find(|e| e.parent == tli)
            .map(|e| e.switchpoint)
    }

    /// The timeline that holds `lsn` along this history (PostgreSQL's
    /// `tliOfPointInHistory`): the first ancestor whose switch point lies
    /// beyond `lsn`, else this timeline.
    pub fn timeline_at(&self, lsn: Lsn) -> TimelineId {
        self.entries
            .iter()
            .find(|e| lsn < e.switchpoint)
            .map_or(self.timeline, |e| e.parent)
    }

    /// Whether a server that was on `from_tli` at `at_lsn` can recover along
    /// this history into `self.timeline`: it is on this timeline already, or
    /// `from_tli` is an ancestor that the history leaves at or after `at_lsn`.
    pub fn reaches(&self, from_tli: TimelineId, at_lsn: Lsn) -> bool {
        from_tli == self.timeline || self.switchpoint(from_tli).is_some_and(|sp| sp >= at_lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    // As PostgreSQL 16 writes them after two promotions and a point-in-time restore.
    const TL2: &str = "1\t0/3000000\tno recovery target specified\n";
    const TL4: &str = "1\t0/3000000\tno recovery target specified\n\
                       \n\
                       2\t0/5A0000D8\tat restore point \"before_migration\"\n\
                       3\t1/2000000\tbefore 2024-05-03 10:15:00.123456+00\n";

    #[test]
    fn parses_single_parent() {
        let h = TimelineHistory::parse(TimelineId(2), TL2).unwrap();
        assert_eq!(h.timeline, TimelineId(2));
        assert_eq!(
            h.entries,
            vec![HistoryEntry {
                parent: TimelineId(1),
                switchpoint: lsn("0/3000000")
            }]
        );
        assert_eq!(h.ancestors(), vec![(TimelineId(1), lsn("0/3000000"))]);
    }

    #[test]
    fn parses_three_levels_with_comments_and_blank_lines() {
        let text = format!("# written by hand\n   # indented comment\n{TL4}\n\n");
        let h = TimelineHistory::parse(TimelineId(4), &text).unwrap();
        assert_eq!(
            h.ancestors(),
            vec![
                (TimelineId(1), lsn("0/3000000")),
                (TimelineId(2), lsn("0/5A0000D8")),
                (TimelineId(3), lsn("1/2000000")),
            ]
        );
        assert_eq!(h.switchpoint(TimelineId(2)), Some(lsn("0/5A0000D8")));
        assert_eq!(h.switchpoint(TimelineId(4)), None);
        assert_eq!(h.timeline_at(lsn("0/2FFFFFF")), TimelineId(1));
        assert_eq!(h.timeline_at(lsn("0/3000000")), TimelineId(2));
        assert_eq!(h.timeline_at(lsn("1/1000000")), TimelineId(3));
        assert_eq!(h.timeline_at(lsn("1/2000000")), TimelineId(4));
    }

    #[test]
    fn reaches_follows_switchpoints() {
        let h = TimelineHistory::parse(TimelineId(4), TL4).unwrap();
        // On the timeline itself: anywhere.
        assert!(h.reaches(TimelineId(4), lsn("FF/0")));
        // On an ancestor: only up to where the history leaves it.
        assert!(h.reaches(TimelineId(1), lsn("0/2000028")));
        assert!(h.reaches(TimelineId(1), lsn("0/3000000")));
        assert!(!h.reaches(TimelineId(1), lsn("0/3000028")));
        assert!(h.reaches(TimelineId(3), lsn("0/F0000028")));
        assert!(!h.reaches(TimelineId(3), lsn("1/2000028")));
        // Not an ancestor: never (timeline 5 is newer, 6 unrelated).
        assert!(!h.reaches(TimelineId(5), lsn("0/0")));
        assert!(!h.reaches(TimelineId(6), lsn("0/0")));
    }

    #[test]
    fn skipped_timelines_are_not_ancestors() {
        // Timeline 2 was abandoned: 3 branched from 1 directly.
        let h = TimelineHistory::parse(TimelineId(3), "1\t0/4000000\tfoo\n").unwrap();
        assert!(!h.reaches(TimelineId(2), lsn("0/1000000")));
        assert!(h.reaches(TimelineId(1), lsn("0/1000000")));
    }

    #[test]
    fn empty_history_has_no_ancestors() {
        let h = TimelineHistory::parse(TimelineId(1), "").unwrap();
        assert!(h.entries.is_empty());
        assert!(h.reaches(TimelineId(1), lsn("0/1000000")));
    }

    #[test]
    fn accepts_spaces_and_lowercase_hex() {
        let h =
            TimelineHistory::parse(TimelineId(3), "  1 0/a000000 reason\n2\t0/b000000").unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[1].switchpoint, lsn("0/B000000"));
    }

    #[test]
    fn rejects_malformed_histories_naming_file_and_line() {
        let cases: &[(u32, &str, &str)] = &[
            (2, "one\t0/3000000\treason\n", "00000002.history: line 1"),
            (2, "# c\n1\n", "00000002.history: line 2"),
            (2, "1\t0-3000000\treason\n", "expected a switch point"),
            (2, "0\t0/3000000\treason\n", "numeric parent timeline"),
            (3, "2\t0/3000000\tx\n1\t0/4000000\ty\n", "must increase"),
            (3, "1\t0/3000000\tx\n1\t0/4000000\ty\n", "line 2"),
            (
                2,
                "2\t0/3000000\treason\n",
                "not below the file's own timeline 2",
            ),
            (
                0x1A,
                "1\t0/3000000\tx\n1A\t0/5000000\ty\n",
                "0000001A.history: line 2",
            ),
        ];
        for (tl, text, want) in cases {
            let err = TimelineHistory::parse(TimelineId(*tl), text).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(want), "{text:?}: {msg:?} lacks {want:?}");
        }
    }
}
