//! Local identity endpoints that speak the real protocols cloud workloads get
//! their credentials from, on one port of 127.0.0.1:
//! - AWS STS `AssumeRoleWithWebIdentity` (IRSA: a projected token file and a
//!   role ARN), form-encoded POST, XML answer;
//! - the AWS container credentials endpoint (EKS Pod Identity, ECS): GET with
//!   the token file's contents as `Authorization`, JSON answer;
//! - the GCE metadata server's access tokens (GKE Workload Identity), GET
//!   with `Metadata-Flavor: Google`;
//! - Google's OAuth 2.0 token endpoint for service-account key files (a
//!   signed JWT assertion, RFC 7523, dated within minutes of its clock);
//! - Microsoft Entra ID's token endpoint, `POST /{tenant}/oauth2/v2.0/token`
//!   with a federated client assertion (AKS Workload Identity: the pod's
//!   projected service-account token);
//! - the Azure instance metadata service's managed-identity tokens
//!   (`GET /metadata/identity/oauth2/token` with `Metadata: true`).
//!
//! Each checks what a real one checks (the token, the role, the headers)
//! and hands out credentials the test's storage server accepts: the S3
//! server's key pair (so s3s-fs verifies every signature made with it), a
//! bearer token the test's proxy requires in front of the GCS emulator, or
//! an Entra-shaped access token (JWT) that Azurite's `--oauth basic` checks
//! for issuer, audience and lifetime.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The web-identity token the STS accepts (what EKS projects into a pod).
pub const WEB_IDENTITY_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.cairn-test-irsa.c2lnbmF0dXJl";
/// The role the STS lets that token assume.
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/cairn-backup";
/// The token the container credentials endpoint wants in `Authorization`.
pub const POD_IDENTITY_TOKEN: &str = "cairn-test-pod-identity-token";
/// The access token the metadata server hands out.
pub const METADATA_ACCESS_TOKEN: &str = "ya29.cairn-test-metadata";
/// The access token the OAuth endpoint hands out for a key file's assertion.
pub const KEY_FILE_ACCESS_TOKEN: &str = "ya29.cairn-test-key-file";

/// The Entra ID tenant of the Azure tests.
pub const AZURE_TENANT: &str = "0c0ffee0-ca1e-4000-8000-00000000ca1e";
/// The app registration (or user-assigned identity) workload identity maps
/// the pod's service account to.
pub const AZURE_CLIENT_ID: &str = "c1a1e000-ca1e-4000-8000-000000000001";
/// The user-assigned managed identity the metadata service knows.
pub const AZURE_MANAGED_CLIENT_ID: &str = "c1a1e000-ca1e-4000-8000-000000000002";
/// The subject Entra's federated credential names.
pub const AZURE_SUBJECT: &str = "system:serviceaccount:db:cairn";

/// Seconds since the epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An unsigned JWT (`alg: none`) carrying `claims`: neither Azurite's basic
/// check nor this server's verifies signatures, only the claims.
fn jwt(claims: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        b64(&claims)
    )
}

/// A JWT's claims, if `token` is one.
fn claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The service-account token AKS projects into a workload-identity pod
/// (`azure-identity-token`), for `subject`, expiring `expires_in` seconds
/// from now (negative: already expired).
pub fn azure_federated_token(subject: &str, expires_in: i64) -> String {
    let now = now();
    jwt(serde_json::json!({
        "aud": ["api://AzureADTokenExchange"],
        "iss": "https://oidc.prod-aks.azure.com/cairn-test/",
        "sub": subject,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + expires_in,
    }))
}

/// An Entra access token for Azure Storage, as Azurite checks it.
fn azure_access_token(identity: &str) -> String {
    let now = now();
    jwt(serde_json::json!({
        "aud": "https://storage.azure.com",
        "iss": format!("https://sts.windows.net/{AZURE_TENANT}/"),
        "tid": AZURE_TENANT,
        "appid": identity,
        "oid": identity,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
    }))
}

pub struct IdentityServer {
    pub port: u16,
    /// `METHOD path` of every request, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl IdentityServer {
    /// Starts the endpoints; AWS answers carry `key`/`secret`.
    pub fn start(key: &str, secret: &str) -> IdentityServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        let (key, secret) = (key.to_string(), secret.to_string());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (r, key, secret) = (r.clone(), key.clone(), secret.clone());
                        std::thread::spawn(move || serve(c, &r, &key, &secret));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        IdentityServer {
            port,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How many requests went to paths starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| {
                r.split_once(' ')
                    .is_some_and(|(_, p)| p.starts_with(prefix))
            })
            .count()
    }
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

fn read_request(c: &TcpStream) -> Option<Request> {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn respond(mut c: &TcpStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Metadata-Flavor: Google\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A form-encoded body's fields, percent-decoded.
fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

fn serve(c: TcpStream, log: &Mutex<Vec<String>>, key: &str, secret: &str) {
    let Some(req) = read_request(&c) else {
        return;
    };
    log.lock()
        .unwrap()
        .push(format!("{} {}", req.method, req.path));
    let path = req.path.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        // STS: the query API, form-encoded.
        ("POST", "/") => {
            let f = form(&req.body);
            let error = |code: &str, message: &str| {
                let body = format!(
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
                     <Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>\
                     <RequestId>cairn-test</RequestId></ErrorResponse>"
                );
                respond(&c, "400 Bad Request", "text/xml", &body);
            };
            if f.get("Action").map(String::as_str) != Some("AssumeRoleWithWebIdentity") {
                return error(
                    "InvalidAction",
                    "only AssumeRoleWithWebIdentity is served here",
                );
            }
            if f.get("WebIdentityToken").map(String::as_str) != Some(WEB_IDENTITY_TOKEN) {
                return error(
                    "InvalidIdentityToken",
                    "Couldn't retrieve verification key from your identity provider",
                );
            }
            if f.get("RoleArn").map(String::as_str) != Some(ROLE_ARN) {
                return error(
                    "AccessDenied",
                    "Not authorized to perform sts:AssumeRoleWithWebIdentity",
                );
            }
            let session = f.get("RoleSessionName").cloned().unwrap_or_default();
            let body = format!(
                "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                 <AssumeRoleWithWebIdentityResult><Credentials>\
                 <AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>\
                 <SessionToken>cairn-test-session</SessionToken><Expiration>{FAR_FUTURE}</Expiration>\
                 </Credentials><SubjectFromWebIdentityToken>system:serviceaccount:db:cairn\
                 </SubjectFromWebIdentityToken><AssumedRoleUser>\
                 <Arn>arn:aws:sts::123456789012:assumed-role/cairn-backup/{session}</Arn>\
                 <AssumedRoleId>AROACAIRNTEST:{session}</AssumedRoleId></AssumedRoleUser>\
                 <Provider>oidc.eks.local</Provider><Audience>sts.amazonaws.com</Audience>\
                 </AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>cairn-test\
                 </RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>"
            );
            respond(&c, "200 OK", "text/xml", &body);
        }
        // Container credentials (EKS Pod Identity agent, ECS).
        ("GET", "/v1/credentials") => {
            if req.headers.get("authorization").map(String::as_str) != Some(POD_IDENTITY_TOKEN) {
                return respond(
                    &c,
                    "401 Unauthorized",
                    "application/json",
                    "{\"Message\":\"invalid authorization token\"}",
                );
            }
            let body = format!(
                "{{\"AccessKeyId\":\"{key}\",\"SecretAccessKey\":\"{secret}\",\
                 \"Token\":\"cairn-test-session\",\"Expiration\":\"{FAR_FUTURE}\"}}"
            );
            respond(&c, "200 OK", "application/json", &body);
        }
        // The GCE metadata server.
        ("GET", p) if p.starts_with("/computeMetadata/v1/") => {
            if req.headers.get("metadata-flavor").map(String::as_str) != Some("Google") {
                return respond(&c, "403 Forbidden", "text/plain", "Missing Metadata-Flavor");
            }
            match p {
                "/computeMetadata/v1/instance/service-accounts/default/token" => {
                    let body = format!(
                        "{{\"access_token\":\"{METADATA_ACCESS_TOKEN}\",\"expires_in\":3599,\
                         \"token_type\":\"Bearer\"}}"
                    );
                    respond(&c, "200 OK", "application/json", &body)
                }
                "/computeMetadata/v1/project/project-id" => {
                    respond(&c, "200 OK", "text/plain", "cairn-test")
                }
                _ => respond(&c, "404 Not Found", "text/plain", "not found"),
            }
        }
        // Google's OAuth 2.0 token endpoint: a JWT signed with the key file's key.
        ("POST", "/token") => {
            let f = form(&req.body);
            let assertion = f.get("assertion").cloned().unwrap_or_default();
            let grant = f.get("grant_type").map(String::as_str);
            if grant != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
                || assertion.split('.').count() != 3
            {
                return respond(
                    &c,
                    "400 Bad Request",
                    "application/json",
                    "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT\"}",
                );
            }
            // The assertion's times come from the client's clock; Google
            // takes them only near its own.
            let claims = claims(&assertion).unwrap_or_default();
            let (iat, exp) = (claims["iat"].as_i64(), claims["exp"].as_i64());
            let now = now();
            if iat.is_none_or(|iat| (iat - now).abs() > 300) || exp.is_none_or(|exp| exp < now) {
                return respond(
                    &c,
                    "400 Bad Request",
                    "application/json",
                    "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT: Token \
                     must be a short-lived token (60 minutes) and in a reasonable timeframe. \
                     Check your iat and exp values in the JWT claim.\"}",
                );
            }
            let body = format!(
                "{{\"access_token\":\"{KEY_FILE_ACCESS_TOKEN}\",\"expires_in\":3599,\
                 \"token_type\":\"Bearer\"}}"
            );
            respond(&c, "200 OK", "application/json", &body);
        }
        // Entra ID: the client-credentials grant with a federated assertion.
        ("POST", p) if p.ends_with("/oauth2/v2.0/token") => entra_token(&c, p, &form(&req.body)),
        // The Azure instance metadata service (managed identity).
        ("GET", "/metadata/identity/oauth2/token") => imds_token(&c, &req),
        _ => respond(&c, "404 Not Found", "text/plain", "not found"),
    }
}

/// Entra's answer to a token request: refusals carry the AADSTS codes the
/// real service gives for the same mistakes.
fn entra_token(c: &TcpStream, path: &str, f: &HashMap<String, String>) {
    let refuse = |status: &str, error: &str, description: &str| {
        let body = serde_json::json!({
            "error": error,
            "error_description": description,
            "error_codes": [description[6..].split(':').next().and_then(|c| c.parse::<u32>().ok())],
        });
        respond(c, status, "application/json", &body.to_string());
    };
    let field = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    if path != format!("/{AZURE_TENANT}/oauth2/v2.0/token") {
        return refuse(
            "400 Bad Request",
            "invalid_request",
            "AADSTS900023: Specified tenant identifier is neither a valid DNS name, nor a \
             valid external domain.",
        );
    }
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return refuse(
            "400 Bad Request",
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
        );
    }
    if field("scope") != "https://storage.azure.com/.default" {
        return refuse(
            "400 Bad Request",
            "invalid_scope",
            "AADSTS70011: The provided request must include a 'scope' input parameter.",
        );
    }
    if field("client_id") != AZURE_CLIENT_ID {
        return refuse(
            "400 Bad Request",
            "unauthorized_client",
            "AADSTS700016: Application with identifier was not found in the directory.",
        );
    }
    let assertion = claims(field("client_assertion"));
    let Some(assertion) = assertion.filter(|a| a["sub"] == AZURE_SUBJECT) else {
        return refuse(
            "401 Unauthorized",
            "invalid_client",
            "AADSTS70021: No matching federated identity record found for presented assertion.",
        );
    };
    if assertion["exp"].as_i64().is_none_or(|exp| exp < now()) {
        return refuse(
            "401 Unauthorized",
            "invalid_client",
            "AADSTS700024: Client assertion is not within its valid time range.",
        );
    }
    let body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": azure_access_token(AZURE_CLIENT_ID),
    });
    respond(c, "200 OK", "application/json", &body.to_string());
}

/// The instance metadata service's managed-identity token.
fn imds_token(c: &TcpStream, req: &Request) {
    let refuse = |description: &str| {
        let body =
            serde_json::json!({"error": "invalid_request", "error_description": description});
        respond(c, "400 Bad Request", "application/json", &body.to_string());
    };
    if req.headers.get("metadata").map(String::as_str) != Some("true") {
        return refuse("Required metadata header not specified");
    }
    let query = form(req.path.split_once('?').map(|(_, q)| q).unwrap_or_default());
    if query.get("resource").map(String::as_str) != Some("https://storage.azure.com") {
        return refuse("Required query variable 'resource' is missing");
    }
    let identity = query
        .get("client_id")
        .map_or(AZURE_MANAGED_CLIENT_ID, String::as_str);
    if identity != AZURE_MANAGED_CLIENT_ID {
        return refuse("Identity not found");
    }
    let now = now();
    let body = serde_json::json!({
        "access_token": azure_access_token(identity),
        "client_id": identity,
        "expires_in": "3599",
        "expires_on": (now + 3599).to_string(),
        "ext_expires_in": "3599",
        "not_before": (now - 60).to_string(),
        "resource": "https://storage.azure.com",
        "token_type": "Bearer",
    });
    respond(c, "200 OK", "application/json", &body.to_string());
}
