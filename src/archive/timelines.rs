//! Timeline histories as the archive holds them: `wal/<timeline>.history`,
//! read and parsed (encrypted archives need the age identity).

use super::{ArchiveError, keys, objects};
use crate::Context;
use crate::pg::timeline::TimelineHistory;
use crate::pg::wal::{TimelineId, WalFileName};

/// The archived history of timeline `tli`, parsed; `None` when the archive
/// does not have it.
pub async fn read_history(
    ctx: &Context,
    tli: TimelineId,
) -> Result<Option<TimelineHistory>, ArchiveError> {
    let key = keys::wal(&WalFileName::History(tli));
    let keyring = ctx.keyring()?;
    let Some(text) = objects::read_plain(ctx, &key, keyring.as_ref()).await? else {
        return Ok(None);
    };
    Ok(Some(TimelineHistory::parse(
        tli,
        &String::from_utf8_lossy(&text),
    )?))
}
