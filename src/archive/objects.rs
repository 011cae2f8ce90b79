//! Small objects read and written whole: manifests, running markers and
//! records are kept in the clear (compressed, never encrypted, so that
//! listing, retention and verification need no secret key); `.history` files
//! are WAL files and may be encrypted.

use super::ArchiveError;
use super::keys;
use crate::Context;
use crate::codec::{CodecSettings, decode_to_vec, encode_to_vec};
use crate::storage::{ObjectKey, PutBody, PutMode, StorageError, get_bytes};

/// The plain bytes of a small object, `None` when it does not exist.
/// `keyring` is needed only for encrypted objects.
pub async fn read_plain(
    ctx: &Context,
    key: &ObjectKey,
    keyring: Option<&crate::codec::Keyring>,
) -> Result<Option<Vec<u8>>, ArchiveError> {
    let bytes = match get_bytes(ctx.storage.as_ref(), key).await {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let object = keys::object_name(ctx.storage.location(), key);
    Ok(Some(decode_to_vec(&bytes, keyring, &object)?))
}

/// Stores `plain` compressed, never encrypted.
pub async fn write_plain(
    ctx: &Context,
    key: &ObjectKey,
    plain: &[u8],
    mode: PutMode,
) -> Result<(), StorageError> {
    let settings = CodecSettings {
        recipients: Vec::new(),
        ..ctx.config.codec()
    };
    let (bytes, _) = encode_to_vec(plain, &settings).map_err(|e| StorageError::Permanent {
        op: "encode",
        key: key.to_string(),
        location: ctx.storage.location().to_string(),
        message: e.to_string(),
    })?;
    ctx.storage
        .put(key, PutBody::Bytes(bytes.into()), mode)
        .await
}
