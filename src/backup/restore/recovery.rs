//! The recovery settings a restored directory starts with: where recovery
//! stops (`--recovery-target`), `restore_command` (cairn itself), and
//! `recovery.signal`.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::super::BackupError;
use crate::pg::wal::Lsn;

/// Where recovery from the restored backup should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archive.
    Latest,
    /// The backup's consistency point: the earliest moment it restores to,
    /// which needs no WAL after its stop (a permanent backup whose later WAL
    /// retention removed).
    Immediate,
    Time(String),
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

impl std::str::FromStr for RecoveryTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => return Ok(RecoveryTarget::Latest),
            "immediate" => return Ok(RecoveryTarget::Immediate),
            _ => {}
        }
        let (kind, value) = s.split_once('=').ok_or_else(|| {
            format!("recovery target {s:?}: use latest, immediate, time=…, lsn=…, xid=… or name=…")
        })?;
        if value.is_empty() {
            return Err(format!("recovery target {s:?} has no value"));
        }
        match kind {
            "time" => {
                // PostgreSQL parses the time; reject what it surely cannot.
                if !value.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(format!("recovery target time {value:?} is not a timestamp"));
                }
                Ok(RecoveryTarget::Time(value.to_string()))
            }
            "lsn" => value.parse().map(RecoveryTarget::Lsn).map_err(|_| {
                format!("recovery target lsn {value:?} is not an LSN (like 0/3000028)")
            }),
            "xid" => value
                .parse()
                .map(RecoveryTarget::Xid)
                .map_err(|_| format!("recovery target xid {value:?} is not a transaction id")),
            "name" => Ok(RecoveryTarget::Name(value.to_string())),
            _ => Err(format!(
                "recovery target {s:?}: use latest, immediate, time=…, lsn=…, xid=… or name=…"
            )),
        }
    }
}

/// As `--recovery-target` takes it.
impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("latest"),
            RecoveryTarget::Immediate => f.write_str("immediate"),
            RecoveryTarget::Time(t) => write!(f, "time={t}"),
            RecoveryTarget::Lsn(l) => write!(f, "lsn={l}"),
            RecoveryTarget::Xid(x) => write!(f, "xid={x}"),
            RecoveryTarget::Name(n) => write!(f, "name={n}"),
        }
    }
}

/// Makes the restored directory start as a recovery to `target`, fetching WAL
/// with `restore_command`.
pub fn write_recovery_settings(
    dest: &Path,
    target: &RecoveryTarget,
    restore_command: &str,
    backup: &str,
) -> Result<(), BackupError> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut conf = format!(
        "\n# Added by cairn backup-fetch of {backup} at {}\nrestore_command = {}\n",
        crate::archive::manifest::rfc3339::format(time::OffsetDateTime::now_utc()),
        quote(restore_command)
    );
    let setting = match target {
        RecoveryTarget::Latest => None,
        RecoveryTarget::Immediate => Some(("recovery_target", "immediate".to_string())),
        RecoveryTarget::Time(t) => Some(("recovery_target_time", t.clone())),
        RecoveryTarget::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
        RecoveryTarget::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        RecoveryTarget::Name(n) => Some(("recovery_target_name", n.clone())),
    };
    conf.push_str("recovery_target_timeline = 'latest'\n");
    if let Some((key, value)) = setting {
        conf.push_str(&format!("{key} = {}\n", quote(&value)));
        // Open for writes at the target, on a new timeline, rather than pause.
        conf.push_str("recovery_target_action = 'promote'\n");
    }
    let auto = dest.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .map_err(BackupError::io(&auto))?;
    f.write_all(conf.as_bytes())
        .map_err(BackupError::io(&auto))?;
    let signal = dest.join("recovery.signal");
    fs::write(&signal, b"").map_err(BackupError::io(&signal))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_targets_parse() {
        assert_eq!("latest".parse(), Ok(RecoveryTarget::Latest));
        assert_eq!("immediate".parse(), Ok(RecoveryTarget::Immediate));
        assert_eq!(
            "lsn=0/3000028".parse(),
            Ok(RecoveryTarget::Lsn("0/3000028".parse().unwrap()))
        );
        assert_eq!("xid=1234".parse(), Ok(RecoveryTarget::Xid(1234)));
        assert_eq!(
            "time=2026-11-21 10:00:00+00".parse(),
            Ok(RecoveryTarget::Time("2026-11-21 10:00:00+00".into()))
        );
        for bad in [
            "",
            "now",
            "time=",
            "lsn=x",
            "xid=-1",
            "when=1",
            "time=yesterday",
        ] {
            assert!(bad.parse::<RecoveryTarget>().is_err(), "{bad}");
        }
    }
}
