//! Azure Shared Key signatures, for the one request cairn changes after the
//! `object_store` crate signed it: a Put Block List that must create its blob
//! only if absent. The crate cannot put `If-None-Match` on that request, and
//! Shared Key signs that header, so the connector adds it and signs anew.
//! <https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, header};

/// An account's name and decoded key.
pub(super) struct SharedKey {
    account: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKey")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl SharedKey {
    /// The key as Azure hands it out (base64); `None` if it is not base64
    /// (the crate refuses such a key when it builds the client).
    pub(super) fn new(account: &str, key: &str) -> Option<SharedKey> {
        Some(SharedKey {
            account: account.to_string(),
            key: STANDARD.decode(key.trim()).ok()?,
        })
    }

    /// The `Authorization` value of a request with these headers.
    pub(super) fn authorization(&self, method: &Method, url: &url::Url, h: &HeaderMap) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(self.string_to_sign(method, url, h).as_bytes());
        format!(
            "SharedKey {}:{}",
            self.account,
            STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    fn string_to_sign(&self, method: &Method, url: &url::Url, h: &HeaderMap) -> String {
        let field = |name: header::HeaderName| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        // Since version 2015-02-21 a zero length is signed as empty.
        let length = Some(field(header::CONTENT_LENGTH)).filter(|l| l != "0");
        let mut to_sign = [
            method.as_str().to_string(),
            field(header::CONTENT_ENCODING),
            field(header::CONTENT_LANGUAGE),
            length.unwrap_or_default(),
            field(header::HeaderName::from_static("content-md5")),
            field(header::CONTENT_TYPE),
            field(header::DATE),
            field(header::IF_MODIFIED_SINCE),
            field(header::IF_MATCH),
            field(header::IF_NONE_MATCH),
            field(header::IF_UNMODIFIED_SINCE),
            field(header::RANGE),
        ]
        .join("\n");
        to_sign.push('\n');
        // Canonicalized headers: every x-ms- header, by name.
        let mut ms: Vec<(&str, &str)> = h
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-ms-"))
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or_default().trim()))
            .collect();
        ms.sort_unstable();
        for (k, v) in ms {
            to_sign.push_str(&format!("{k}:{v}\n"));
        }
        // Canonicalized resource: the path under the account, then each
        // query parameter by name with its values.
        to_sign.push_str(&format!("/{}{}", self.account, url.path()));
        let mut params: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (k, v) in url.query_pairs() {
            params
                .entry(k.to_lowercase())
                .or_default()
                .push(v.into_owned());
        }
        for (k, mut values) in params {
            values.sort();
            to_sign.push_str(&format!("\n{k}:{}", values.join(",")));
        }
        to_sign
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_documented_layout() {
        let key = SharedKey::new("myaccount", &STANDARD.encode(b"secret")).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "42".parse().unwrap());
        h.insert(header::IF_NONE_MATCH, "*".parse().unwrap());
        h.insert("x-ms-version", "2021-08-06".parse().unwrap());
        h.insert(
            "x-ms-date",
            "Fri, 04 Dec 2026 12:00:00 GMT".parse().unwrap(),
        );
        h.insert("x-ms-blob-content-type", " text/plain ".parse().unwrap());
        let url: url::Url =
            "https://myaccount.blob.core.windows.net/c/a%20b?comp=blocklist&B=2&b=1"
                .parse()
                .unwrap();
        // Verb, eleven standard headers (Content-Length, If-None-Match), the
        // x-ms- headers by name, the resource and its parameters by name.
        let want = "PUT\n\n\n42\n\n\n\n\n\n*\n\n\n\
                    x-ms-blob-content-type:text/plain\nx-ms-date:Fri, 04 Dec 2026 12:00:00 GMT\n\
                    x-ms-version:2021-08-06\n/myaccount/c/a%20b\nb:1,2\ncomp:blocklist";
        assert_eq!(key.string_to_sign(&Method::PUT, &url, &h), want);
        assert!(
            key.authorization(&Method::PUT, &url, &h)
                .starts_with("SharedKey myaccount:")
        );
        assert!(SharedKey::new("a", "not base64!").is_none());
    }
}
