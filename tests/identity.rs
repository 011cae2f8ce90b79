//! Workload identity: cairn gets its storage credentials the way pods do,
//! from local endpoints that speak the real protocols (tests/common/identity.rs),
//! with no keys in its environment:
//! - S3 through IRSA (`AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, STS
//!   `AssumeRoleWithWebIdentity`) and through EKS Pod Identity (container
//!   credentials, `AWS_CONTAINER_CREDENTIALS_FULL_URI` + a token file); the S3
//!   server (s3s-fs) checks every signature made with what they hand out;
//! - GCS through the metadata server (GKE Workload Identity) and through a
//!   service-account key file; a proxy in front of the emulator refuses any
//!   request without the token they hand out;
//! - Azure through AKS Workload Identity (a federated token exchanged at
//!   Entra ID's token endpoint) and through a managed identity (the instance
//!   metadata service); Azurite, over HTTPS with `--oauth basic`, checks the
//!   bearer tokens they hand out.
//!
//! A cluster archives, backs up and lists with each; each bad input (token
//! file missing, token refused, role refused, key file missing, metadata
//! server down) is a one-line error naming the store and the cause, with
//! nothing written.

mod common;

use std::path::{Path, PathBuf};

use common::drill::{archiving_primary, fails, list, push, wait_archived};
use common::identity::{self, IdentityServer};
use common::proxy::{Fault, FaultProxy};
use common::{Archive, AzuriteServer, Backend, S3_KEY, S3_SECRET, TestDir, chown_pg};

/// A file the PostgreSQL user can read (archive_command runs as it).
fn secret_file(t: &TestDir, name: &str, contents: &str) -> PathBuf {
    let p = t.path().join(name);
    std::fs::write(&p, contents).unwrap();
    chown_pg(&p);
    p
}

/// A one-line error containing `needle`, exit status 1.
#[track_caller]
fn refused(o: &std::process::Output, needle: &str) {
    fails(o, needle);
    assert_eq!(o.status.code(), Some(1), "{needle}");
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A cluster archives to `a` and takes a backup, which backup-list shows.
fn archives_and_backs_up(t: &TestDir, a: &Archive) {
    let (mut primary, pg) = archiving_primary(t, a);
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let name = push(&pg, &primary, t, &[]);
    wait_archived(&primary);
    let backups = list(&pg, t);
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0]["name"], name.as_str());
    primary.stop();
}

/// No object was written under the archive's prefix.
fn nothing_written(a: &Archive) {
    let dir = a.s3.as_ref().unwrap().bucket_dir().join("cluster-a");
    let files = walk(&dir);
    assert!(files.is_empty(), "written: {files:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
}

#[test]
fn s3_with_a_web_identity_token_irsa() {
    let t = TestDir::new();
    let a = Archive::new(Backend::S3);
    let id = IdentityServer::start(S3_KEY, S3_SECRET);
    let token = secret_file(&t, "token", identity::WEB_IDENTITY_TOKEN);
    let irsa = |token: &Path, role: &str| {
        a.clone_with("AWS_ROLE_ARN", role)
            .with("AWS_WEB_IDENTITY_TOKEN_FILE", &path_str(token))
            .with("AWS_ROLE_SESSION_NAME", "cairn-test")
            .with("AWS_ENDPOINT_URL_STS", &id.url("/"))
            .without("AWS_ACCESS_KEY_ID")
            .without("AWS_SECRET_ACCESS_KEY")
    };

    // Bad input first, while the archive is empty: nothing may be written.
    let missing = t.path().join("no-such-token");
    let o = irsa(&missing, identity::ROLE_ARN).cairn(&["backup-list"], t.path());
    refused(&o, "AWS_WEB_IDENTITY_TOKEN_FILE");
    refused(&o, &path_str(&missing));
    let wrong = secret_file(&t, "wrong-token", "eyJ.not-the-token.x");
    let o = irsa(&wrong, identity::ROLE_ARN).cairn(&["backup-list"], t.path());
    refused(&o, "InvalidIdentityToken");
    let o = irsa(&token, "arn:aws:iam::123456789012:role/someone-else")
        .cairn(&["backup-list"], t.path());
    refused(&o, "AccessDenied");
    nothing_written(&a);

    archives_and_backs_up(&t, &irsa(&token, identity::ROLE_ARN));
    assert!(id.count("/") > 0, "the STS was never asked");
}

#[test]
fn s3_with_container_credentials_eks_pod_identity() {
    let t = TestDir::new();
    let a = Archive::new(Backend::S3);
    let id = IdentityServer::start(S3_KEY, S3_SECRET);
    let token = secret_file(&t, "pod-token", identity::POD_IDENTITY_TOKEN);
    let pod = |token: &Path| {
        a.clone_with(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            &id.url("/v1/credentials"),
        )
        .with("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &path_str(token))
        .without("AWS_ACCESS_KEY_ID")
        .without("AWS_SECRET_ACCESS_KEY")
    };

    let wrong = secret_file(&t, "wrong-token", "not-the-pod-token");
    let o = pod(&wrong).cairn(&["backup-list"], t.path());
    refused(&o, "credentials");
    let missing = t.path().join("no-such-token");
    let o = pod(&missing).cairn(&["backup-list"], t.path());
    refused(&o, &path_str(&missing));
    nothing_written(&a);

    archives_and_backs_up(&t, &pod(&token));
    assert!(id.count("/v1/credentials") > 0);
}

/// No object was written to the GCS emulator's bucket (asked directly,
/// not through the gate).
fn nothing_written_to_gcs(a: &Archive) {
    let g = a.gcs.as_ref().unwrap();
    let listing = common::http_get(g.port, &format!("/storage/v1/b/{}/o", g.bucket));
    let v: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert!(
        v["items"].as_array().is_none_or(|i| i.is_empty()),
        "written: {listing}"
    );
}

/// wal-push of a segment with `a`: what a bad credential must refuse.
fn wal_push(t: &TestDir, a: &Archive) -> std::process::Output {
    let d = common::wal::datadir(t, None);
    let name = common::wal::seg_name(1, 1, 16 << 20);
    common::wal::write_seg(&d, &name, &common::fake_segment(16 << 20, 1, 1), false);
    common::wal::push(a, &d, &name)
}

/// The GCS emulator behind a proxy that wants `token` on every connection.
fn gcs_requiring(a: &Archive, token: &str) -> (FaultProxy, Archive) {
    let proxy = FaultProxy::start(a.gcs.as_ref().unwrap().port);
    let line: &'static str = Box::leak(format!("authorization: bearer {token}").into_boxed_str());
    proxy.inject(Fault::Unauthorized(line), usize::MAX);
    let through = a.clone_with("CAIRN_GCS_ENDPOINT", &proxy.url());
    (proxy, through)
}

#[test]
fn gcs_with_metadata_server_tokens_gke_workload_identity() {
    let t = TestDir::new();
    let a = Archive::new(Backend::Gcs);
    let id = IdentityServer::start(S3_KEY, S3_SECRET);
    let (_proxy, gated) = gcs_requiring(&a, identity::METADATA_ACCESS_TOKEN);

    // Without credentials the store refuses: the gate is real.
    let o = gated.cairn(&["backup-list"], t.path());
    refused(&o, "401");
    refused(&wal_push(&t, &gated), "401");
    // The metadata server down.
    let down = format!("127.0.0.1:{}", common::free_port());
    let no_metadata = gated.clone_with("GCE_METADATA_HOST", &down);
    refused(
        &no_metadata.cairn(&["backup-list"], t.path()),
        "metadata server",
    );
    refused(&wal_push(&t, &no_metadata), "metadata server");
    nothing_written_to_gcs(&a);

    let gke = gated.clone_with("GCE_METADATA_HOST", &format!("127.0.0.1:{}", id.port));
    archives_and_backs_up(&t, &gke);
    assert!(id.count("/computeMetadata/v1/instance/service-accounts/default/token") > 0);
}

#[test]
fn gcs_with_a_service_account_key_file() {
    let t = TestDir::new();
    let a = Archive::new(Backend::Gcs);
    let id = IdentityServer::start(S3_KEY, S3_SECRET);
    let (_proxy, gated) = gcs_requiring(&a, identity::KEY_FILE_ACCESS_TOKEN);
    let pem = t.path().join("key.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "cairn-test",
        "private_key_id": "cairn-test-key",
        "private_key": std::fs::read_to_string(&pem).unwrap(),
        "client_email": "cairn@cairn-test.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": id.url("/token"),
    });
    let key_file = secret_file(&t, "key.json", &key.to_string());

    let missing = t.path().join("no-such-key.json");
    let no_key = gated.clone_with("GOOGLE_APPLICATION_CREDENTIALS", &path_str(&missing));
    refused(
        &no_key.cairn(&["backup-list"], t.path()),
        &path_str(&missing),
    );
    refused(&wal_push(&t, &no_key), &path_str(&missing));
    let with_key = gated.clone_with("GOOGLE_APPLICATION_CREDENTIALS", &path_str(&key_file));
    // A clock two hours ahead (libfaketime): the key file's assertion is
    // dated outside what the token endpoint takes.
    let skewed = with_key
        .clone_with(
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        )
        .with("FAKETIME", "+2h");
    let o = skewed.cairn(&["backup-list"], t.path());
    refused(&o, "Invalid JWT");
    refused(&o, "clock is off");
    refused(&wal_push(&t, &skewed), "clock is off");
    nothing_written_to_gcs(&a);

    archives_and_backs_up(&t, &with_key);
    assert!(id.count("/token") > 0);
}

/// No blob was written to Azurite's container (listed with the account key).
fn nothing_written_to_azure(a: &Archive) {
    let names = a.azure.as_ref().unwrap().blob_names();
    assert!(names.is_empty(), "written: {names:?}");
}

#[test]
fn azure_with_workload_identity_aks() {
    let t = TestDir::new();
    // HTTPS, and bearer tokens checked for issuer, audience and lifetime.
    let a = Archive::on_azurite(AzuriteServer::start_oauth());
    let id = IdentityServer::start(S3_KEY, S3_SECRET);
    let federated = |name: &str, subject: &str, expires_in: i64| {
        secret_file(
            &t,
            name,
            &identity::azure_federated_token(subject, expires_in),
        )
    };
    let token = federated("azure-identity-token", identity::AZURE_SUBJECT, 3600);
    let pod = |token: &Path, client: &str| {
        a.clone_with("AZURE_FEDERATED_TOKEN_FILE", &path_str(token))
            .with("AZURE_CLIENT_ID", client)
            .with("AZURE_TENANT_ID", identity::AZURE_TENANT)
            .with("AZURE_AUTHORITY_HOST", &id.url(""))
            .without("AZURE_STORAGE_KEY")
    };

    // Bad input first, while the container is empty.
    let expired = federated("expired-token", identity::AZURE_SUBJECT, -600);
    let o = pod(&expired, identity::AZURE_CLIENT_ID).cairn(&["backup-list"], t.path());
    refused(&o, "AADSTS700024");
    refused(
        &wal_push(&t, &pod(&expired, identity::AZURE_CLIENT_ID)),
        "AADSTS700024",
    );
    let stranger = federated("other-token", "system:serviceaccount:other:app", 3600);
    let o = pod(&stranger, identity::AZURE_CLIENT_ID).cairn(&["backup-list"], t.path());
    refused(&o, "AADSTS70021");
    let unknown = "c1a1e000-ca1e-4000-8000-0000000000ff";
    refused(&wal_push(&t, &pod(&token, unknown)), "AADSTS700016");
    nothing_written_to_azure(&a);

    archives_and_backs_up(&t, &pod(&token, identity::AZURE_CLIENT_ID));
    let exchanges = id.count(&format!("/{}/oauth2/v2.0/token", identity::AZURE_TENANT));
    assert!(exchanges > 0, "Entra was never asked");
}

#[test]
fn azure_with_a_managed_identity() {
    let t = TestDir::new();
    let a = Archive::on_azurite(AzuriteServer::start_oauth());
    let id = IdentityServer::start(S3_KEY, S3_SECRET);
    let imds = |endpoint: &str| {
        a.clone_with("IDENTITY_ENDPOINT", endpoint)
            .without("AZURE_STORAGE_KEY")
    };
    let endpoint = id.url("/metadata/identity/oauth2/token");

    // The metadata service down, and an identity it does not know.
    let down = format!(
        "http://127.0.0.1:{}/metadata/identity/oauth2/token",
        common::free_port()
    );
    refused(
        &imds(&down).cairn(&["backup-list"], t.path()),
        "managed identity",
    );
    refused(&wal_push(&t, &imds(&down)), "managed identity");
    let stranger = imds(&endpoint).with("AZURE_CLIENT_ID", "c1a1e000-ca1e-4000-8000-0000000000ff");
    refused(
        &stranger.cairn(&["backup-list"], t.path()),
        "Identity not found",
    );
    refused(&wal_push(&t, &stranger), "Identity not found");
    nothing_written_to_azure(&a);

    // The VM's (or node's) identity, then a user-assigned one by client id.
    archives_and_backs_up(&t, &imds(&endpoint));
    let user = imds(&endpoint).with("AZURE_CLIENT_ID", identity::AZURE_MANAGED_CLIENT_ID);
    let o = user.cairn(&["backup-list", "--json"], t.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(id.count("/metadata/identity/oauth2/token") > 0);
}
