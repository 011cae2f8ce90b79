//! The deployment files (`deploy/`, `config/`) and README.md's "Running in
//! production", checked the way an operator relies on them: every example
//! configuration loads; the Kubernetes manifests pass the API's schemas
//! (kubernetes-validate, strict) and the checks an apply or a kubelet would
//! fail on beyond them; the systemd units pass `systemd-analyze verify`; every
//! cairn command line, in the files and in the READMEs, parses with cairn's
//! own argument definitions; every `CAIRN_*` variable they set is a setting;
//! and the README shows the files as they are. No network: the tools come
//! from scripts/test.sh.

// The binary's argument definitions, compiled in here, so that command lines
// are judged by exactly what `cairn` accepts.
#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::config::Config;
use cairn::storage::StorageUrl;
use clap::Parser;
use serde::Deserialize;
use serde_yaml::Value;

/// Kubernetes versions the manifests must be valid for: an older one still
/// common (CronJob `timeZone` needs 1.27) and the newest the validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

/// The placeholder for the age public key in the ConfigMap's cairn.yaml.
const AGE_KEY_PLACEHOLDER: &str = "age1-REPLACE-with-your-public-key";

/// The age identity Secret: only the retention CronJob may mount it.
const IDENTITY_SECRET: &str = "cairn-age-identity";

/// Files README.md's "Running in production" reproduces whole.
const EMBEDDED_IN_README: &[&str] = &[
    "deploy/cron/cairn",
    "deploy/systemd/cairn-backup.timer",
    "deploy/kubernetes/configmap.yaml",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Files directly in a directory of the repository, sorted, as repo paths.
fn files_in(dir: &str, ext: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| ext.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
        .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    out.sort();
    out
}

// --- configuration ----------------------------------------------------------

#[test]
fn every_example_configuration_loads() {
    let files = files_in("config", Some("yaml"));
    for expected in [
        "config/cairn.example.yaml",
        "config/local.yaml",
        "config/s3-aws.yaml",
        "config/s3-compatible.yaml",
        "config/gcs.yaml",
        "config/azure.yaml",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} is missing");
    }
    for f in &files {
        let c = Config::load(Some(&repo().join(f)), Vec::new(), Vec::new())
            .unwrap_or_else(|e| panic!("{f} does not load: {e}"));
        let name = Path::new(f).file_stem().unwrap().to_string_lossy();
        match name.as_ref() {
            "local" => assert!(matches!(c.storage, StorageUrl::File(_)), "{f}"),
            "s3-aws" => {
                assert!(matches!(c.storage, StorageUrl::S3 { .. }), "{f}");
                assert!(c.s3_endpoint.is_none(), "{f}: AWS needs no endpoint");
                assert!(c.s3_region.is_some(), "{f}: name the bucket's region");
            }
            "s3-compatible" => {
                assert!(matches!(c.storage, StorageUrl::S3 { .. }), "{f}");
                assert!(c.s3_endpoint.is_some() && c.s3_force_path_style, "{f}");
            }
            "gcs" => assert!(matches!(c.storage, StorageUrl::Gcs { .. }), "{f}"),
            "azure" => assert!(matches!(c.storage, StorageUrl::Azure { .. }), "{f}"),
            _ => {}
        }
        // Credentials come from the environment, never from these files.
        let text = read(f);
        for secret in [
            "AWS_SECRET_ACCESS_KEY=",
            "AGE-SECRET-KEY-1",
            "password:",
            "AccountKey=",
        ] {
            assert!(
                !text
                    .lines()
                    .any(|l| !l.trim_start().starts_with('#') && l.contains(secret)),
                "{f} holds a secret ({secret})"
            );
        }
    }
}

/// The ConfigMap's cairn.yaml: refused while the key is a placeholder, loads
/// once a real public key replaces it, and holds nothing secret.
#[test]
fn the_configmap_cairn_yaml_loads_once_its_key_is_filled_in() {
    let docs = yaml_docs("deploy/kubernetes/configmap.yaml");
    let cm = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap" && name(d) == "cairn-config")
        .expect("ConfigMap cairn-config");
    let text = cm["data"]["cairn.yaml"]
        .as_str()
        .expect("data: cairn.yaml")
        .to_string();
    assert_eq!(
        text.matches(AGE_KEY_PLACEHOLDER).count(),
        1,
        "the placeholder {AGE_KEY_PLACEHOLDER} appears once"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.yaml");

    std::fs::write(&path, &text).unwrap();
    let err = Config::load(Some(&path), Vec::new(), Vec::new())
        .expect_err("the placeholder key must stop cairn")
        .to_string();
    assert!(err.contains("age_recipients"), "{err}");

    let key = age::x25519::Identity::generate().to_public().to_string();
    std::fs::write(&path, text.replace(AGE_KEY_PLACEHOLDER, &key)).unwrap();
    let c = Config::load(Some(&path), Vec::new(), Vec::new())
        .unwrap_or_else(|e| panic!("configmap.yaml's cairn.yaml: {e}"));
    assert_eq!(c.age_recipients.len(), 1);
    assert!(
        c.age_identity_file.is_empty(),
        "the pushing pods must not be told about an identity"
    );
    assert!(c.postgres.host.is_some() && c.postgres.user.is_some());
    assert!(c.postgres.password.is_none(), "the password is a Secret");
}

// --- Kubernetes -------------------------------------------------------------

fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Every manifest: (file, document).
fn manifests() -> Vec<(String, Value)> {
    let files = files_in("deploy/kubernetes", Some("yaml"));
    assert!(files.len() >= 7, "manifests: {files:?}");
    files
        .into_iter()
        .flat_map(|f| yaml_docs(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

/// A pod template found in a manifest.
struct Pod<'a> {
    owner: String,
    spec: &'a Value,
    labels: &'a Value,
    in_job: bool,
}

fn pods(doc: &Value) -> Vec<Pod<'_>> {
    let owner = format!("{}/{}", kind(doc), name(doc));
    let template = match kind(doc) {
        "CronJob" => Some((&doc["spec"]["jobTemplate"]["spec"]["template"], true)),
        "Job" => Some((&doc["spec"]["template"], true)),
        "StatefulSet" | "Deployment" | "DaemonSet" | "ReplicaSet" => {
            Some((&doc["spec"]["template"], false))
        }
        _ => None,
    };
    match (kind(doc), template) {
        ("Pod", _) => vec![Pod {
            owner,
            spec: &doc["spec"],
            labels: &doc["metadata"]["labels"],
            in_job: false,
        }],
        (_, Some((t, in_job))) => vec![Pod {
            owner,
            spec: &t["spec"],
            labels: &t["metadata"]["labels"],
            in_job,
        }],
        _ => Vec::new(),
    }
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    seq(&spec["initContainers"])
        .iter()
        .chain(seq(&spec["containers"]))
}

/// Whether a container runs cairn: the cairn image without another command.
fn runs_cairn_image(c: &Value) -> bool {
    let image = str_of(&c["image"]);
    let last = image.rsplit('/').next().unwrap_or_default();
    last.split([':', '@']).next() == Some("cairn") && c["command"].is_null()
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let tool = common::tools_dir().join("k8s-venv/bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "kubernetes-validate is not installed at {}: run scripts/test.sh, which installs it",
        tool.display()
    );
    let files: Vec<PathBuf> = files_in("deploy/kubernetes", Some("yaml"))
        .iter()
        .map(|f| repo().join(f))
        .collect();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&tool)
            .arg("--strict")
            .args(["--kubernetes-version", version])
            .args(&files)
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubernetes-validate --strict (Kubernetes {version}):\n{report}"
        );
        // One "passed" line per resource: nothing was skipped as unknown.
        let resources = manifests().len();
        assert_eq!(
            report.matches(" passed ").count(),
            resources,
            "Kubernetes {version}: not every resource was validated:\n{report}"
        );
    }
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// What the schema does not express but an apply (the API server's
/// validation) or the kubelet rejects, and references between the files.
#[test]
fn kubernetes_manifests_pass_the_api_servers_own_checks() {
    let all = manifests();
    let mut by_kind: BTreeMap<(&str, &str), &Value> = BTreeMap::new();
    for (file, d) in &all {
        assert!(
            d["apiVersion"].is_string() && !kind(d).is_empty(),
            "{file}: apiVersion and kind"
        );
        let n = name(d);
        // CronJob names become Job names plus an 11-character suffix.
        let max = if kind(d) == "CronJob" { 52 } else { 63 };
        assert!(is_dns_label(n, max), "{file}: bad name {n:?}");
        assert!(
            d["metadata"]["namespace"].is_null(),
            "{file}: {n} names a namespace; apply with -n instead"
        );
        assert!(
            by_kind.insert((kind(d), n), d).is_none(),
            "{file}: {} {n} defined twice",
            kind(d)
        );
    }
    let data_keys = |k: &str, n: &str| -> Option<BTreeSet<String>> {
        let d = by_kind.get(&(k, n))?;
        let mut keys = BTreeSet::new();
        for field in ["data", "stringData"] {
            if let Some(m) = d[field].as_mapping() {
                keys.extend(m.keys().filter_map(|k| k.as_str().map(String::from)));
            }
        }
        Some(keys)
    };
    let mut pods_seen = 0;
    for (file, d) in &all {
        if kind(d) == "CronJob" {
            let schedule = str_of(&d["spec"]["schedule"]);
            assert_eq!(
                schedule.split_whitespace().count(),
                5,
                "{file}: schedule {schedule:?}"
            );
            check_cron_fields(&schedule.split_whitespace().collect::<Vec<_>>(), file);
        }
        if kind(d) == "StatefulSet" {
            let service = str_of(&d["spec"]["serviceName"]);
            assert!(
                by_kind.contains_key(&("Service", service)),
                "{file}: serviceName {service:?} is not a Service here"
            );
        }
        if let Some(sel) = d["spec"]["selector"]["matchLabels"].as_mapping() {
            let labels = &d["spec"]["template"]["metadata"]["labels"];
            for (k, v) in sel {
                assert_eq!(
                    &labels[k.as_str().unwrap()],
                    v,
                    "{file}: `selector` does not match template labels"
                );
            }
        }
        for pod in pods(d) {
            pods_seen += 1;
            let spec = pod.spec;
            let owner = format!("{file}: {}", pod.owner);
            assert!(pod.labels.is_mapping(), "{owner}: template labels");
            if pod.in_job {
                let policy = str_of(&spec["restartPolicy"]);
                assert!(
                    policy == "Never" || policy == "OnFailure",
                    "{owner}: a Job's restartPolicy must be Never or OnFailure, not {policy:?}"
                );
            }
            // Volumes: unique names, each configMap/secret defined here.
            let mut volumes: BTreeMap<String, &Value> = BTreeMap::new();
            for v in seq(&spec["volumes"]) {
                let vn = str_of(&v["name"]).to_string();
                assert!(is_dns_label(&vn, 63), "{owner}: volume name {vn:?}");
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    assert!(
                        by_kind.contains_key(&("ConfigMap", cm)),
                        "{owner}: volume {vn} names ConfigMap {cm}, which is not defined"
                    );
                }
                if let Some(s) = v["secret"]["secretName"].as_str() {
                    assert!(
                        by_kind.contains_key(&("Secret", s)),
                        "{owner}: volume {vn} names Secret {s}, which is not defined"
                    );
                }
                assert!(
                    volumes.insert(vn.clone(), v).is_none(),
                    "{owner}: volume {vn} twice"
                );
            }
            if kind(d) == "StatefulSet" {
                for t in seq(&d["spec"]["volumeClaimTemplates"]) {
                    volumes.insert(str_of(&t["metadata"]["name"]).to_string(), t);
                }
            }
            let mut names = BTreeSet::new();
            for c in containers(spec) {
                let cn = str_of(&c["name"]);
                assert!(is_dns_label(cn, 63), "{owner}: container name {cn:?}");
                assert!(names.insert(cn), "{owner}: container {cn} twice");
                let mut paths = BTreeSet::new();
                for m in seq(&c["volumeMounts"]) {
                    let vn = str_of(&m["name"]);
                    assert!(
                        volumes.contains_key(vn),
                        "{owner}: container {cn} mounts volume {vn:?}, which the pod does not declare"
                    );
                    let mp = str_of(&m["mountPath"]);
                    assert!(
                        mp.starts_with('/') && paths.insert(mp),
                        "{owner}: container {cn}: mountPath {mp:?}"
                    );
                }
                for e in seq(&c["env"]) {
                    let en = str_of(&e["name"]);
                    assert!(
                        !en.is_empty()
                            && !en.starts_with(|c: char| c.is_ascii_digit())
                            && en
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
                        "{owner}: container {cn}: env name {en:?}"
                    );
                    assert!(
                        e["value"].is_null() || e["value"].is_string(),
                        "{owner}: container {cn}: env {en} must be a string"
                    );
                    for (r, k) in [("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")] {
                        let rf = &e["valueFrom"][r];
                        if rf.is_null() {
                            continue;
                        }
                        let (rn, key) = (str_of(&rf["name"]), str_of(&rf["key"]));
                        let keys = data_keys(k, rn)
                            .unwrap_or_else(|| panic!("{owner}: env {en}: no {k} {rn}"));
                        assert!(
                            keys.contains(key),
                            "{owner}: env {en}: {k} {rn} has no key {key}"
                        );
                    }
                }
                for e in seq(&c["envFrom"]) {
                    for (r, k) in [("secretRef", "Secret"), ("configMapRef", "ConfigMap")] {
                        if let Some(rn) = e[r]["name"].as_str() {
                            assert!(
                                by_kind.contains_key(&(k, rn)),
                                "{owner}: container {cn}: envFrom {k} {rn} is not defined"
                            );
                        }
                    }
                }
                if runs_cairn_image(c) || mentions_cairn_binary(c) {
                    // One storage identity for every pod that runs cairn,
                    // swapped by replacing serviceaccount.yaml.
                    let account = str_of(&spec["serviceAccountName"]);
                    assert!(
                        account == "cairn" && by_kind.contains_key(&("ServiceAccount", account)),
                        "{owner}: runs cairn, so it needs serviceAccountName: cairn"
                    );
                    assert_eq!(
                        spec["enableServiceLinks"].as_bool(),
                        Some(false),
                        "{owner}: runs cairn, so it needs enableServiceLinks: false \
                         (a Service named cairn would inject CAIRN_* variables)"
                    );
                }
            }
        }
    }
    assert!(pods_seen >= 3, "pod templates found: {pods_seen}");
}

/// The workload-identity variants (deploy/kubernetes/identity/) pass the
/// API's schemas and each replaces serviceaccount.yaml (or the storage
/// Secret, for a GCS key file) with what its cloud needs.
#[test]
fn identity_manifests_match_the_api_schemas_and_replace_the_service_account() {
    let tool = common::tools_dir().join("k8s-venv/bin/kubernetes-validate");
    let files = files_in("deploy/kubernetes/identity", Some("yaml"));
    assert_eq!(files.len(), 5, "{files:?}");
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&tool)
            .arg("--strict")
            .args(["--kubernetes-version", version])
            .args(files.iter().map(|f| repo().join(f)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate --strict (Kubernetes {version}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let annotation = |f: &str, key: &str| {
        let docs = yaml_docs(f);
        assert_eq!(docs.len(), 1, "{f}");
        let d = &docs[0];
        if kind(d) == "ServiceAccount" {
            assert_eq!(name(d), "cairn", "{f}");
            assert_eq!(
                d["automountServiceAccountToken"].as_bool(),
                Some(false),
                "{f}"
            );
        }
        str_of(&d["metadata"]["annotations"][key]).to_string()
    };
    let k = "deploy/kubernetes/identity";
    assert!(
        annotation(&format!("{k}/aws-irsa.yaml"), "eks.amazonaws.com/role-arn")
            .starts_with("arn:aws:iam::")
    );
    assert!(
        annotation(
            &format!("{k}/gke-workload-identity.yaml"),
            "iam.gke.io/gcp-service-account"
        )
        .ends_with(".iam.gserviceaccount.com")
    );
    assert_eq!(
        annotation(
            &format!("{k}/aws-pod-identity.yaml"),
            "eks.amazonaws.com/role-arn"
        ),
        ""
    );
    assert!(
        annotation(
            &format!("{k}/azure-workload-identity.yaml"),
            "azure.workload.identity/client-id"
        )
        .contains("client-id")
    );
    let key = &yaml_docs(&format!("{k}/gcs-key-file.yaml"))[0];
    assert_eq!((kind(key), name(key)), ("Secret", "cairn-gcs-key"));
    assert!(key["stringData"]["gcs-key.json"].is_string());
}

/// Whether a container's arguments run the cairn binary (archive_command).
fn mentions_cairn_binary(c: &Value) -> bool {
    seq(&c["args"])
        .iter()
        .chain(seq(&c["command"]))
        .any(|a| str_of(a).contains("/cairn "))
}

/// The pods that push (PostgreSQL's archive_command, the backup job) hold
/// only the public key; the identity is for the jobs that read the archive
/// (retention reads timeline history files, the drill restores).
#[test]
fn only_the_jobs_that_read_the_archive_hold_its_identity() {
    let mut holders = BTreeSet::new();
    for (_, d) in manifests() {
        for pod in pods(&d) {
            let mounts_identity = seq(&pod.spec["volumes"])
                .iter()
                .any(|v| v["secret"]["secretName"].as_str() == Some(IDENTITY_SECRET));
            let env_identity = containers(pod.spec).any(|c| {
                seq(&c["env"]).iter().any(|e| {
                    str_of(&e["name"]) == "CAIRN_AGE_IDENTITY_FILE"
                        || e["valueFrom"]["secretKeyRef"]["name"].as_str() == Some(IDENTITY_SECRET)
                }) || seq(&c["envFrom"])
                    .iter()
                    .any(|e| e["secretRef"]["name"].as_str() == Some(IDENTITY_SECRET))
            });
            if mounts_identity || env_identity {
                holders.insert(pod.owner.clone());
            }
        }
    }
    assert_eq!(
        holders,
        BTreeSet::from([
            "CronJob/cairn-drill".to_string(),
            "CronJob/cairn-retention".to_string()
        ])
    );
}

// --- cairn command lines ----------------------------------------------------

/// A cairn command line found somewhere: where, and its arguments.
#[derive(Debug)]
struct Invocation {
    origin: String,
    args: Vec<String>,
}

/// A `CAIRN_*=value` a file sets for cairn.
#[derive(Debug)]
struct Variable {
    origin: String,
    name: String,
    value: String,
}

#[derive(Default)]
struct Found {
    invocations: Vec<Invocation>,
    variables: Vec<Variable>,
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Op(String),
}

/// Splits a shell command line into words and operators (quotes, backslashes,
/// comments; no expansions), enough for the command lines in the docs.
fn shell_split(line: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            word.push(chars.next().unwrap())
                        }
                        _ => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    out.push(Token::Word(std::mem::take(&mut word)));
                    in_word = false;
                }
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                if in_word {
                    out.push(Token::Word(std::mem::take(&mut word)));
                    in_word = false;
                }
                let mut op = ch.to_string();
                if let Some(&next) = chars.peek()
                    && ((ch == '&' || ch == '|' || ch == '>') && next == ch)
                {
                    op.push(chars.next().unwrap());
                }
                out.push(Token::Op(op));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        out.push(Token::Word(word));
    }
    out
}

fn is_assignment(w: &str) -> Option<(&str, &str)> {
    let (n, v) = w.split_once('=')?;
    (!n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then_some((n, v))
}

fn is_cairn(word: &str) -> bool {
    word == "cairn" || word.ends_with("/cairn")
}

impl Found {
    /// A shell command line: each simple command whose command word is cairn
    /// (after assignments and `sudo`/`env`/`exec` wrappers, or after `--` of
    /// `kubectl exec`), and the CAIRN_* assignments before it.
    fn shell(&mut self, origin: &str, line: &str) {
        let mut segments: Vec<Vec<String>> = vec![Vec::new()];
        let mut redirect = false;
        for t in shell_split(line) {
            match t {
                Token::Op(op) if op.starts_with('>') || op == "<" => redirect = true,
                Token::Op(_) => segments.push(Vec::new()),
                Token::Word(_) if redirect => redirect = false,
                Token::Word(w) => segments.last_mut().unwrap().push(w),
            }
        }
        for words in segments {
            self.simple_command(origin, &words);
        }
    }

    fn simple_command(&mut self, origin: &str, words: &[String]) {
        let mut i = 0;
        let mut assignments = Vec::new();
        loop {
            while let Some((n, v)) = words.get(i).and_then(|w| is_assignment(w)) {
                assignments.push((n.to_string(), v.to_string()));
                i += 1;
            }
            match words.get(i).map(String::as_str) {
                Some("sudo") => {
                    i += 1;
                    while let Some(w) = words.get(i).filter(|w| w.starts_with('-')) {
                        i += if ["-u", "-g", "--user", "--group"].contains(&w.as_str()) {
                            2
                        } else {
                            1
                        };
                    }
                }
                Some("env" | "exec" | "nice" | "time" | "command") => i += 1,
                Some("kubectl" | "docker") => match words.iter().position(|w| w == "--") {
                    Some(p) => i = p + 1,
                    None => return,
                },
                _ => break,
            }
        }
        let Some(cmd) = words.get(i) else { return };
        if !is_cairn(cmd) {
            return;
        }
        for (name, value) in assignments {
            if name.starts_with("CAIRN_") {
                self.variables.push(Variable {
                    origin: origin.to_string(),
                    name,
                    value,
                });
            }
        }
        self.invocations.push(Invocation {
            origin: origin.to_string(),
            args: words[i + 1..].to_vec(),
        });
    }

    /// `archive_command = '…'`, `archive_command=…` (postgres -c) and the same
    /// for restore_command, anywhere in the line.
    fn postgres_setting(&mut self, origin: &str, line: &str) -> bool {
        for setting in ["archive_command", "restore_command"] {
            let Some(at) = line.find(setting) else {
                continue;
            };
            let rest = line[at + setting.len()..].trim_start();
            let Some(value) = rest.strip_prefix('=') else {
                continue;
            };
            let value = value.trim().trim_matches(|c| c == '\'' || c == '"');
            self.shell(&format!("{origin} ({setting})"), value);
            return true;
        }
        false
    }

    /// A cron job line (`m h dom mon dow user command`); its command.
    fn cron_line(&mut self, origin: &str, line: &str) -> bool {
        let mut rest = line.trim_start();
        let mut fields = Vec::new();
        for _ in 0..6 {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        let is_time =
            |f: &str| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit() || "*,-/".contains(c));
        if rest.is_empty() || !fields[..5].iter().all(|f| is_time(f)) {
            return false;
        }
        check_cron_fields(&fields[..5], origin);
        assert!(
            fields[5]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{origin}: cron.d lines name a user: {line}"
        );
        self.shell(origin, rest);
        true
    }

    fn variable(&mut self, origin: &str, name: &str, value: &str) {
        if name.starts_with("CAIRN_") {
            self.variables.push(Variable {
                origin: origin.to_string(),
                name: name.to_string(),
                value: value.to_string(),
            });
        }
    }

    /// The fenced code blocks of a Markdown file.
    fn markdown(&mut self, rel: &str) {
        for block in code_blocks(&read(rel)) {
            let origin = format!("{rel}:{}", block.line);
            let shell = matches!(
                block.lang.as_str(),
                "" | "sh" | "bash" | "shell" | "console"
            );
            for line in joined_lines(&block.text) {
                if self.postgres_setting(&origin, &line) {
                    continue;
                }
                match block.lang.as_str() {
                    "cron" => {
                        if let Some((n, v)) = is_assignment(line.trim()) {
                            self.variable(&origin, n, v);
                        } else {
                            self.cron_line(&origin, &line);
                        }
                    }
                    "ini" => {
                        if let Some(cmd) = exec_start(&line) {
                            self.shell(&origin, cmd);
                        }
                    }
                    _ if shell => self.shell(&origin, &line),
                    _ => {}
                }
            }
        }
    }
}

/// Lines with backslash continuations joined.
fn joined_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(line);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The command of an `ExecStart=` line, without systemd's prefixes.
fn exec_start(line: &str) -> Option<&str> {
    let v = line.trim().strip_prefix("ExecStart=")?;
    Some(v.trim_start_matches(['-', '@', ':', '+', '!']))
}

/// Checks the five time fields of a cron schedule against their ranges.
fn check_cron_fields(fields: &[&str], origin: &str) {
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    for (f, (lo, hi)) in fields.iter().zip(ranges) {
        for part in f.split(',') {
            let (range, step) = part.split_once('/').unwrap_or((part, "1"));
            assert!(
                step.parse::<u32>().is_ok_and(|s| s > 0),
                "{origin}: cron field {f:?}"
            );
            if range == "*" {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            for n in [a, b] {
                assert!(
                    n.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n)),
                    "{origin}: cron field {f:?} outside {lo}-{hi}"
                );
            }
        }
    }
}

struct Block {
    lang: String,
    text: String,
    /// 1-based line of the opening fence.
    line: usize,
}

fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_string(),
                    text: String::new(),
                    line: i + 1,
                })
            }
            (Some(_), Some("")) => out.push(open.take().unwrap()),
            (Some(b), _) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unclosed code block");
    out
}

/// Every cairn command line and CAIRN_* variable in deploy/, config/ and the
/// READMEs.
fn everything() -> Found {
    let mut found = Found::default();
    found.markdown("README.md");
    found.markdown("deploy/README.md");

    let cron = "deploy/cron/cairn";
    for (i, line) in read(cron).lines().enumerate() {
        let origin = format!("{cron}:{}", i + 1);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some((n, v)) = is_assignment(line.trim()) {
            found.variable(&origin, n, v);
        } else {
            assert!(found.cron_line(&origin, line), "{origin}: not a cron line");
        }
    }

    for unit in files_in("deploy/systemd", Some("service")) {
        for (i, line) in read(&unit).lines().enumerate() {
            let origin = format!("{unit}:{}", i + 1);
            if let Some(cmd) = exec_start(line) {
                found.shell(&origin, cmd);
            }
            if let Some(env) = line.trim().strip_prefix("Environment=") {
                for t in shell_split(env) {
                    let Token::Word(w) = t else {
                        panic!("{origin}: {line}")
                    };
                    let (n, v) = is_assignment(&w).unwrap_or_else(|| panic!("{origin}: {w}"));
                    found.variable(&origin, n, v);
                }
            }
        }
    }

    for (file, d) in manifests() {
        for pod in pods(&d) {
            for c in containers(pod.spec) {
                let origin = format!("{file}: {} container {}", pod.owner, str_of(&c["name"]));
                let args: Vec<String> = seq(&c["args"])
                    .iter()
                    .map(|a| str_of(a).to_string())
                    .collect();
                if runs_cairn_image(c) {
                    found.invocations.push(Invocation {
                        origin: origin.clone(),
                        args: args.clone(),
                    });
                }
                let command: Vec<String> = seq(&c["command"])
                    .iter()
                    .map(|a| str_of(a).to_string())
                    .collect();
                if command.first().is_some_and(|c| is_cairn(c)) {
                    let mut all = command[1..].to_vec();
                    all.extend(args.iter().cloned());
                    found.invocations.push(Invocation {
                        origin: origin.clone(),
                        args: all,
                    });
                }
                for a in &args {
                    found.postgres_setting(&origin, a);
                }
                for e in seq(&c["env"]) {
                    if let Some(v) = e["value"].as_str() {
                        found.variable(&origin, str_of(&e["name"]), v);
                    }
                }
            }
        }
    }
    found
}

/// Every cairn command line in the deployment files and the READMEs is one
/// cairn accepts: its real argument definitions judge them.
#[test]
fn every_cairn_command_line_parses() {
    let found = everything();
    let mut failures = Vec::new();
    for inv in &found.invocations {
        let argv = std::iter::once("cairn".to_string()).chain(inv.args.iter().cloned());
        if let Err(e) = cli::Cli::try_parse_from(argv) {
            use clap::error::ErrorKind;
            if !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                failures.push(format!("{}: cairn {}\n{e}", inv.origin, inv.args.join(" ")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The scan found what it must: guards against a scanner that sees nothing.
    let has = |origin: &str, args: &[&str]| {
        found
            .invocations
            .iter()
            .any(|i| i.origin.starts_with(origin) && i.args == args)
    };
    let k8s = "deploy/kubernetes/";
    // The weekly drill on a server: the same in cron and systemd.
    const DRILL: &[&str] = &[
        "drill",
        "LATEST",
        "--dir",
        "/var/lib/postgresql/cairn-drill",
        "--report",
        "/var/lib/postgresql/cairn-drill-report.txt",
    ];
    for (origin, args) in [
        (k8s, &["backup-push", "--remote"][..]),
        (
            k8s,
            &["delete", "retain", "4", "--within", "14d", "--confirm"],
        ),
        (k8s, &["wal-verify"]),
        (k8s, &["drill", "LATEST", "--dir", "/scratch/drill"]),
        (k8s, &["wal-receive", "--create-slot", "--spool", "/spool"]),
        (
            k8s,
            &["--config", "/etc/cairn/cairn.yaml", "wal-push", "%p"],
        ),
        (
            k8s,
            &["--config", "/etc/cairn/cairn.yaml", "wal-fetch", "%f", "%p"],
        ),
        (
            "deploy/systemd/cairn-backup.service",
            &["backup-push", "/var/lib/postgresql/15/main"],
        ),
        (
            "deploy/systemd/cairn-retention.service",
            &["delete", "retain", "4", "--within", "14d", "--confirm"],
        ),
        ("deploy/systemd/cairn-retention.service", &["wal-verify"]),
        (
            "deploy/systemd/cairn-wal-receive.service",
            &[
                "wal-receive",
                "--create-slot",
                "--spool",
                "/var/lib/cairn-receive",
            ],
        ),
        ("deploy/systemd/cairn-drill.service", DRILL),
        ("deploy/cron/cairn", DRILL),
        (
            "deploy/cron/cairn",
            &["backup-push", "/var/lib/postgresql/15/main"],
        ),
        (
            "deploy/cron/cairn",
            &["delete", "retain", "4", "--within", "14d", "--confirm"],
        ),
        ("deploy/cron/cairn", &["wal-verify"]),
        (
            "README.md",
            &["--config", "/etc/cairn/cairn.yaml", "wal-push", "%p"],
        ),
        (
            "deploy/README.md",
            &["--config", "/etc/cairn/cairn.yaml", "wal-push", "%p"],
        ),
    ] {
        assert!(
            has(origin, args),
            "no `cairn {}` found in {origin}; found: {:#?}",
            args.join(" "),
            found.invocations
        );
    }
    let in_readme = found
        .invocations
        .iter()
        .filter(|i| i.origin.starts_with("README.md"))
        .count();
    assert!(
        in_readme >= 25,
        "only {in_readme} cairn lines found in README.md"
    );
}

/// Every `CAIRN_*` variable the files set is a configuration setting with a
/// valid value (cairn rejects unknown ones), and CAIRN_CONFIG names the
/// configuration file where the files install it.
#[test]
fn every_cairn_variable_is_a_valid_setting() {
    let found = everything();
    assert!(found.variables.len() >= 8, "{:#?}", found.variables);
    for v in &found.variables {
        if v.name == "CAIRN_CONFIG" {
            assert_eq!(v.value, "/etc/cairn/cairn.yaml", "{}", v.origin);
            continue;
        }
        if let Err(e) = Config::load(None, vec![(v.name.clone(), v.value.clone())], Vec::new()) {
            panic!("{}: {}={}: {e}", v.origin, v.name, v.value);
        }
    }
}

/// Files the Kubernetes pods read by path are where a volume puts them.
#[test]
fn kubernetes_pods_find_their_files() {
    let all = manifests();
    let keys_of = |k: &str, n: &str| -> BTreeSet<String> {
        all.iter()
            .find(|(_, d)| kind(d) == k && name(d) == n)
            .map(|(_, d)| {
                ["data", "stringData"]
                    .iter()
                    .filter_map(|f| d[*f].as_mapping())
                    .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(String::from)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut checked = 0;
    for (file, d) in &all {
        for pod in pods(d) {
            for c in containers(pod.spec) {
                let owner = format!("{file}: {} container {}", pod.owner, str_of(&c["name"]));
                let mut paths = Vec::new();
                for e in seq(&c["env"]) {
                    let n = str_of(&e["name"]);
                    if ["CAIRN_CONFIG", "CAIRN_AGE_IDENTITY_FILE", "SSL_CERT_FILE"].contains(&n) {
                        paths.push(str_of(&e["value"]).to_string());
                    }
                }
                for a in seq(&c["args"]).iter().chain(seq(&c["command"])) {
                    let words: Vec<String> = shell_split(str_of(a))
                        .into_iter()
                        .filter_map(|t| match t {
                            Token::Word(w) => Some(w),
                            Token::Op(_) => None,
                        })
                        .collect();
                    for (i, w) in words.iter().enumerate() {
                        if let Some(cmd) = w.strip_prefix("archive_command=") {
                            paths.push(cmd.to_string());
                        } else if let Some(cmd) = w.strip_prefix("restore_command=") {
                            paths.push(cmd.to_string());
                        } else if w == "--config" {
                            paths.push(words[i + 1].clone());
                        }
                    }
                }
                for p in paths {
                    let mount = seq(&c["volumeMounts"])
                        .iter()
                        .find(|m| p.starts_with(&format!("{}/", str_of(&m["mountPath"]))))
                        .unwrap_or_else(|| panic!("{owner}: nothing is mounted at {p}"));
                    let rel = &p[str_of(&mount["mountPath"]).len() + 1..];
                    let volume = seq(&pod.spec["volumes"])
                        .iter()
                        .find(|v| v["name"] == mount["name"])
                        .unwrap();
                    let keys = if let Some(n) = volume["configMap"]["name"].as_str() {
                        keys_of("ConfigMap", n)
                    } else if let Some(n) = volume["secret"]["secretName"].as_str() {
                        keys_of("Secret", n)
                    } else {
                        // An emptyDir an init container fills: name what it copies.
                        let copied: BTreeSet<String> = containers(pod.spec)
                            .flat_map(|c| seq(&c["command"]).iter().map(str_of))
                            .filter_map(|a| Path::new(a).file_name())
                            .map(|f| f.to_string_lossy().into_owned())
                            .collect();
                        copied
                    };
                    assert!(
                        keys.contains(rel),
                        "{owner}: {p} is not in its volume ({keys:?})"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 8, "paths checked: {checked}");
}

/// The drill's pod runs as the drill image's postgres user (PostgreSQL
/// refuses root), restores into a directory below its scratch volume's mount
/// (a fresh volume may hold lost+found, and the drill wants an empty
/// directory), is not retried, and outlives the drill's own timeout.
#[test]
fn the_drill_job_runs_as_postgres_on_its_own_scratch_volume() {
    let (_, d) = manifests()
        .into_iter()
        .find(|(_, d)| kind(d) == "CronJob" && name(d) == "cairn-drill")
        .expect("CronJob cairn-drill");
    let job = &d["spec"]["jobTemplate"]["spec"];
    assert_eq!(job["backoffLimit"].as_u64(), Some(0));
    let drill_timeout = 6 * 3600;
    assert!(job["activeDeadlineSeconds"].as_u64().unwrap() > drill_timeout);
    let pod = &job["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(999));
    let c = containers(pod).next().unwrap();
    assert!(str_of(&c["image"]).contains("-drill-pg"), "the drill image");
    let args: Vec<&str> = seq(&c["args"]).iter().map(str_of).collect();
    let dir = args[args.iter().position(|a| *a == "--dir").unwrap() + 1];
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| dir.starts_with(&format!("{}/", str_of(&m["mountPath"]))))
        .expect("--dir is below a mount");
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(
        volume["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"]
            .is_string(),
        "the scratch volume is a claim sized for a restore: {volume:?}"
    );
}

// --- systemd, cron, Docker --------------------------------------------------

/// The units' sections and keys as cairn needs them, then systemd's own
/// verifier (unknown keys, bad values, timers without their service).
#[test]
fn systemd_units_are_valid() {
    let units = files_in("deploy/systemd", None);
    assert_eq!(
        units,
        [
            "deploy/systemd/cairn-backup.service",
            "deploy/systemd/cairn-backup.timer",
            "deploy/systemd/cairn-drill.service",
            "deploy/systemd/cairn-drill.timer",
            "deploy/systemd/cairn-retention.service",
            "deploy/systemd/cairn-retention.timer",
            "deploy/systemd/cairn-wal-receive.service",
        ]
    );
    // The one long-running service: started at boot, restarted always.
    let daemon = "deploy/systemd/cairn-wal-receive.service";
    for unit in &units {
        let mut section = String::new();
        let mut keys: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for line in read(unit).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{unit}: not key=value: {line}"));
            assert!(!section.is_empty(), "{unit}: {k} outside a section");
            keys.entry((section.clone(), k.to_string()))
                .or_default()
                .push(v.to_string());
        }
        let get = |s: &str, k: &str| keys.get(&(s.to_string(), k.to_string())).cloned();
        assert!(get("Unit", "Description").is_some(), "{unit}: Description");
        if unit == daemon {
            assert_eq!(get("Service", "Type"), Some(vec!["exec".into()]));
            assert_eq!(get("Service", "Restart"), Some(vec!["always".into()]));
            assert_eq!(get("Service", "User"), Some(vec!["postgres".into()]));
            let exec = get("Service", "ExecStart").expect("ExecStart");
            assert!(exec[0].starts_with("/usr/local/bin/cairn wal-receive "));
            assert_eq!(
                get("Install", "WantedBy"),
                Some(vec!["multi-user.target".into()])
            );
        } else if unit.ends_with(".service") {
            assert_eq!(
                get("Service", "Type"),
                Some(vec!["oneshot".into()]),
                "{unit}"
            );
            assert_eq!(
                get("Service", "User"),
                Some(vec!["postgres".into()]),
                "{unit}"
            );
            assert_eq!(
                get("Service", "EnvironmentFile"),
                Some(vec!["-/etc/cairn/cairn.env".into()]),
                "{unit}"
            );
            let exec = get("Service", "ExecStart").expect("ExecStart");
            assert!(
                exec.iter().all(|e| e.starts_with("/usr/local/bin/cairn ")),
                "{unit}: {exec:?}"
            );
            // PGDATA stays readable (and pg_wal/.cairn writable for backup-push's lock).
            let protect = get("Service", "ProtectSystem").unwrap_or_default();
            assert_ne!(protect, ["strict"], "{unit}: strict makes PGDATA read-only");
            for k in ["InaccessiblePaths", "ReadOnlyPaths", "TemporaryFileSystem"] {
                assert!(get("Service", k).is_none(), "{unit}: {k} may hide PGDATA");
            }
            assert!(
                get("Install", "WantedBy").is_none(),
                "{unit}: the timer starts it"
            );
        } else {
            assert!(get("Timer", "OnCalendar").is_some(), "{unit}: OnCalendar");
            assert_eq!(
                get("Install", "WantedBy"),
                Some(vec!["timers.target".into()]),
                "{unit}"
            );
            let service = unit.replace(".timer", ".service");
            assert!(units.contains(&service), "{unit}: no {service}");
        }
    }

    // systemd-analyze checks ExecStart's binary exists: point it at the one
    // built for this test.
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for unit in &units {
        let text = read(unit).replace("/usr/local/bin/cairn", env!("CARGO_BIN_EXE_cairn"));
        let p = dir.path().join(Path::new(unit).file_name().unwrap());
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}: run scripts/test.sh, which installs it"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Complaints about our units name them; other lines are the host's.
    let ours: Vec<&str> = report.lines().filter(|l| l.contains("cairn-")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{report}"
    );
}

#[test]
fn the_cron_file_is_one_cron_installs() {
    let rel = "deploy/cron/cairn";
    let text = read(rel);
    // cron ignores a last line without a newline; run-parts-style names only.
    assert!(text.ends_with('\n'), "{rel} must end with a newline");
    let file = Path::new(rel).file_name().unwrap().to_string_lossy();
    assert!(
        file.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "cron ignores /etc/cron.d/{file}"
    );
    let mut jobs = 0;
    let mut found = Found::default();
    for (i, line) in text.lines().enumerate() {
        let origin = format!("{rel}:{}", i + 1);
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || is_assignment(t).is_some() {
            continue;
        }
        assert!(found.cron_line(&origin, line), "{origin}: {line}");
        jobs += 1;
        assert!(
            line.split_whitespace().nth(5) == Some("postgres"),
            "{origin}: runs as postgres"
        );
        assert!(
            shell_split(line)
                .iter()
                .all(|t| !matches!(t, Token::Word(w) if w == "cairn")),
            "{origin}: cron's PATH lacks /usr/local/bin: give the binary's full path"
        );
    }
    assert_eq!(jobs, 3);
    assert_eq!(found.invocations.len(), 4);
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_unprivileged() {
    let text = read("deploy/docker/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    // The builder is pinned to the toolchain Cargo.toml asks for.
    let rust_version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("rust-version in Cargo.toml");
    let builder = froms[0].split_whitespace().nth(1).unwrap();
    assert!(
        builder.starts_with(&format!("rust:{rust_version}."))
            && builder
                .split(['-', ':'])
                .nth(1)
                .unwrap()
                .matches('.')
                .count()
                == 2,
        "pin the builder to rust:{rust_version}.<patch>: {builder}"
    );
    assert!(text.contains("--locked"), "build with --locked");
    let last = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[last..];
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY --from=")),
        "the runtime stage copies the binary from the build stage"
    );
    assert!(
        runtime.iter().any(|l| l.contains("ca-certificates")),
        "CA certificates in the runtime image"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let uid = user.split(':').next().unwrap().trim();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "a numeric, non-root USER (runAsNonRoot can check only numbers): {user}"
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("ENTRYPOINT [\"/usr/local/bin/cairn\"]")),
        "ENTRYPOINT is cairn"
    );
    // The drill image: PostgreSQL's official image of one major version (a
    // build argument) with the binary, as postgres (its uid, numeric).
    let drill = lines
        .iter()
        .position(|l| l.starts_with("FROM ") && l.ends_with(" AS drill"))
        .expect("a stage named drill");
    assert!(
        lines[drill].starts_with("FROM postgres:${PG_MAJOR}-"),
        "the drill stage is the postgres image of PG_MAJOR: {}",
        lines[drill]
    );
    assert!(
        lines
            .iter()
            .take_while(|l| !l.starts_with("FROM "))
            .any(|l| l.starts_with("ARG PG_MAJOR=")),
        "PG_MAJOR is a global build argument with a default"
    );
    let stage = &lines[drill + 1..last];
    assert!(stage.contains(&"COPY --from=build /out/cairn /usr/local/bin/cairn"));
    assert!(stage.contains(&"USER 999:999"), "{stage:?}");
    assert!(stage.contains(&"ENTRYPOINT [\"/usr/local/bin/cairn\"]"));
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "/target"),
        ".dockerignore"
    );
}

// --- README -----------------------------------------------------------------

/// The section of README.md that walks through production use.
fn production_section(readme: &str) -> &str {
    let start = readme
        .find("\n## Running in production\n")
        .expect("README.md has a \"## Running in production\" section");
    let layout = readme.find("\n## Layout\n").expect("## Layout");
    assert!(start < layout, "Running in production comes before Layout");
    let body = &readme[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |e| e + 3);
    &body[..end]
}

/// Blocks that show a file: whole (the block is the file), or an excerpt
/// (`# excerpt of PATH`, then runs of the file's consecutive lines, separated
/// by `# ...` where lines are left out, in the file's order).
#[test]
fn the_readme_shows_the_files_as_they_are() {
    let readme = read("README.md");
    let section = production_section(&readme);
    let blocks = code_blocks(section);
    let mut whole = BTreeSet::new();
    let mut excerpts = 0;
    for b in &blocks {
        let first = b.text.lines().next().unwrap_or_default();
        if let Some(path) = first.strip_prefix("# excerpt of ") {
            check_excerpt(path.trim(), &b.text);
            excerpts += 1;
            continue;
        }
        for f in EMBEDDED_IN_README {
            if b.text == read(f) {
                whole.insert(*f);
            }
        }
    }
    for f in EMBEDDED_IN_README {
        assert!(
            whole.contains(f),
            "README.md's Running in production shows {f}, but not as it is now"
        );
    }
    assert!(excerpts >= 5, "excerpts: {excerpts}");

    // Every file under deploy/ and config/ is explained, and every such path
    // the READMEs name exists.
    let deploy_readme = read("deploy/README.md");
    for dir in [
        "config",
        "deploy/docker",
        "deploy/kubernetes",
        "deploy/systemd",
        "deploy/cron",
    ] {
        for f in files_in(dir, None) {
            let base = f.rsplit('/').next().unwrap();
            let rel = f.strip_prefix("deploy/").unwrap_or(&f);
            assert!(
                section.contains(&f) || deploy_readme.contains(rel) || deploy_readme.contains(base),
                "{f} is explained neither in README.md's Running in production nor in deploy/README.md"
            );
        }
    }
    for (doc, text) in [("README.md", &readme), ("deploy/README.md", &deploy_readme)] {
        for path in repo_paths(text) {
            assert!(
                repo().join(&path).exists(),
                "{doc} names {path}, which does not exist"
            );
        }
    }
}

fn check_excerpt(path: &str, excerpt: &str) {
    let file = read(path);
    let file: Vec<&str> = file.lines().collect();
    let lines: Vec<&str> = excerpt.lines().skip(1).collect();
    let gap = |l: &str| l.trim() == "# ...";
    let mut runs: Vec<Vec<&str>> = vec![Vec::new()];
    for l in &lines {
        if gap(l) {
            runs.push(Vec::new());
        } else {
            runs.last_mut().unwrap().push(l);
        }
    }
    let starts_open = lines.first().is_some_and(|l| gap(l));
    let ends_open = lines.last().is_some_and(|l| gap(l));
    let runs: Vec<&Vec<&str>> = runs.iter().filter(|r| !r.is_empty()).collect();
    let mut at = 0;
    for (i, run) in runs.iter().enumerate() {
        let found = (at..=file.len().saturating_sub(run.len()))
            .find(|&s| file[s..s + run.len()] == run[..])
            .unwrap_or_else(|| {
                panic!(
                    "README.md's excerpt of {path}: these lines are not in it, in this order:\n{}",
                    run.join("\n")
                )
            });
        if i == 0 && !starts_open {
            assert_eq!(
                found, 0,
                "README.md's excerpt of {path} starts at its top, or with `# ...`"
            );
        }
        at = found + run.len();
    }
    if !ends_open {
        assert_eq!(
            at,
            file.len(),
            "README.md's excerpt of {path} ends at its end, or with `# ...`"
        );
    }
}

/// Paths under deploy/ or config/ named in a text (outside URLs and longer
/// paths), without anchors and trailing punctuation.
fn repo_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["deploy/", "config/"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let at = from + i;
            from = at + prefix.len();
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || "/._-~".contains(c)) {
                continue;
            }
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/._-*".contains(*c))
                .collect();
            let path = path.trim_end_matches(['.', ',']);
            if path.contains('*') {
                continue;
            }
            out.insert(path.to_string());
        }
    }
    out
}
