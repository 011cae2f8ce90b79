use std::io::{Read, Write};

use super::*;

fn settings(c: Compression, encrypt: Option<&age::x25519::Identity>) -> CodecSettings {
    CodecSettings {
        compression: c,
        zstd_level: 3,
        recipients: encrypt.map(|i| vec![i.to_public()]).unwrap_or_default(),
    }
}

fn keyring(id: &age::x25519::Identity) -> Keyring {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("key.txt");
    use age::secrecy::ExposeSecret;
    std::fs::write(
        &p,
        format!("# test key\n{}\n", id.to_string().expose_secret()),
    )
    .unwrap();
    Keyring::from_file(&p).unwrap()
}

fn sample(n: usize) -> Vec<u8> {
    // Half text-like, half pseudo-random: compressible but not trivially.
    let mut x = 0x1234_5678u32;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 2 == 0 {
                b'a' + (i % 7) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

fn decode(obj: &[u8], kr: Option<&Keyring>) -> Result<Vec<u8>, CodecError> {
    let mut d = Decoder::new(obj, kr, "test/object")?;
    let mut out = Vec::new();
    d.read_to_end(&mut out).map_err(CodecError::from_io)?;
    Ok(out)
}

#[test]
fn round_trips_every_combination_and_size() {
    let id = age::x25519::Identity::generate();
    let kr = keyring(&id);
    for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
        for enc in [None, Some(&id)] {
            for n in [0, 1, 47, 48, 49, 4096, (1 << 20) + 13, 3 << 20] {
                let plain = sample(n);
                let s = settings(c, enc);
                let (obj, digest) = encode_to_vec(&plain, &s).unwrap();
                assert_eq!(digest, PlainDigest::of(&plain));
                let h = Header::read_from(&mut &obj[..], "o").unwrap();
                assert_eq!(
                    (h.compression, h.encrypted, h.digest),
                    (c, enc.is_some(), Some(digest))
                );
                assert_eq!(
                    decode(&obj, Some(&kr)).unwrap(),
                    plain,
                    "{c} {} {n}",
                    enc.is_some()
                );
            }
        }
    }
}

#[test]
fn streaming_encoder_without_known_digest() {
    let plain = sample(5 << 20);
    let mut e = Encoder::new(Vec::new(), &settings(Compression::Zstd, None), None).unwrap();
    for chunk in plain.chunks(12345) {
        e.write_all(chunk).unwrap();
    }
    let (obj, d) = e.finish().unwrap();
    assert_eq!(d, PlainDigest::of(&plain));
    assert!(
        Header::read_from(&mut &obj[..], "o")
            .unwrap()
            .digest
            .is_none()
    );
    assert_eq!(decode(&obj, None).unwrap(), plain);
}

#[test]
fn every_flipped_byte_is_detected() {
    let id = age::x25519::Identity::generate();
    let kr = keyring(&id);
    for (c, enc) in [
        (Compression::None, None),
        (Compression::Lz4, None),
        (Compression::Zstd, None),
        (Compression::Lz4, Some(&id)),
    ] {
        let plain = sample(3000);
        let (obj, _) = encode_to_vec(&plain, &settings(c, enc)).unwrap();
        for i in 0..obj.len() {
            let mut bad = obj.clone();
            bad[i] ^= 0x01;
            // A flip in framing that decoders ignore may still yield the right bytes;
            // what must never happen is different bytes coming out.
            if let Ok(out) = decode(&bad, Some(&kr)) {
                assert!(
                    out == plain,
                    "{c} enc={} flip at {i} of {} gave wrong bytes",
                    enc.is_some(),
                    obj.len()
                );
            }
        }
    }
}

#[test]
fn every_truncation_is_detected() {
    let id = age::x25519::Identity::generate();
    let kr = keyring(&id);
    for (c, enc) in [
        (Compression::None, None),
        (Compression::Lz4, None),
        (Compression::Zstd, Some(&id)),
    ] {
        let plain = sample(2000);
        let (obj, _) = encode_to_vec(&plain, &settings(c, enc)).unwrap();
        for n in 0..obj.len() {
            // Cutting only an end-of-frame marker loses nothing; any real loss errors.
            if let Ok(out) = decode(&obj[..n], Some(&kr)) {
                assert!(
                    out == plain && n + 8 >= obj.len(),
                    "{c} truncated to {n} of {} undetected",
                    obj.len()
                );
            }
        }
    }
}

#[test]
fn encrypted_objects_need_the_right_identity() {
    let id = age::x25519::Identity::generate();
    let (obj, _) = encode_to_vec(b"secret wal", &settings(Compression::Lz4, Some(&id))).unwrap();
    assert!(matches!(
        decode(&obj, None),
        Err(CodecError::NoIdentity { .. })
    ));
    let other = keyring(&age::x25519::Identity::generate());
    let e = decode(&obj, Some(&other)).unwrap_err();
    assert!(matches!(e, CodecError::WrongIdentity { .. }), "{e}");
    assert!(!e.to_string().contains("AGE-SECRET-KEY"), "{e}");
}

#[test]
fn rejects_foreign_and_future_objects() {
    assert!(matches!(
        decode(b"hello, this is not an object", None),
        Err(CodecError::NotAnObject { .. })
    ));
    let (mut obj, _) = encode_to_vec(b"x", &CodecSettings::default()).unwrap();
    obj[8] = 2;
    assert!(matches!(
        decode(&obj, None),
        Err(CodecError::UnsupportedVersion { version: 2, .. })
    ));
}

#[test]
fn identity_file_errors_name_the_file_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.txt");
    std::fs::write(&p, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
    let e = Keyring::from_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.txt") && e.contains("line 1") && !e.contains("NOTAKEY"),
        "{e}"
    );
    assert!(Keyring::from_file(&dir.path().join("missing")).is_err());
}

/// Drains an encoded stream: its bytes, or the error it ended with.
async fn collect(mut s: crate::storage::ByteStream) -> std::io::Result<Vec<u8>> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    while let Some(b) = s.try_next().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

#[tokio::test]
async fn encode_stream_matches_the_writer_and_verifies() {
    let id = age::x25519::Identity::generate();
    let kr = keyring(&id);
    let plain = sample((3 << 20) + 7);
    let digest = PlainDigest::of(&plain);
    for (c, enc) in [(Compression::Lz4, Some(&id)), (Compression::Zstd, None)] {
        let e = encode_stream(
            std::io::Cursor::new(plain.clone()),
            settings(c, enc),
            Some(digest),
            "sample".into(),
        );
        let obj = collect(e.body).await.unwrap();
        let (d, stored) = e.task.await.unwrap().unwrap();
        assert_eq!(d, digest);
        assert_eq!(stored, obj.len() as u64);
        assert_eq!(decode(&obj, Some(&kr)).unwrap(), plain);
        assert_eq!(
            Header::read_from(&mut &obj[..], "o").unwrap().digest,
            Some(digest)
        );
    }
}

#[tokio::test]
async fn encode_stream_fails_when_the_source_differs_from_its_digest() {
    // As if the file changed between hashing and encoding: the stream must end
    // in an error, never cleanly, so that no put of it can succeed.
    let plain = sample(1 << 20);
    let mut other = plain.clone();
    other[12345] ^= 1;
    let e = encode_stream(
        std::io::Cursor::new(other),
        settings(Compression::Lz4, None),
        Some(PlainDigest::of(&plain)),
        "pg_wal/000000010000000000000001".into(),
    );
    let err = collect(e.body).await.unwrap_err();
    assert!(err.to_string().contains("changed while"), "{err}");
    let task_err = e.task.await.unwrap().unwrap_err().to_string();
    assert!(
        task_err.contains("pg_wal/000000010000000000000001"),
        "{task_err}"
    );
}
