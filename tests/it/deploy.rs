//! The deploy artefacts as a platform team uses them: the Kubernetes
//! manifests validate against the API's schemas (kubernetes-validate,
//! strict), the kustomization lists them all, the container hardening the
//! platform expects is there, and the config they mount is a valid udstil
//! config whose ports are the ones the manifests expose.

use std::path::Path;
use std::process::Command;

use crate::common::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

fn validate(files: &[std::path::PathBuf]) -> std::process::Output {
    Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files)
        .output()
        .expect("kubernetes-validate is installed (pip)")
}

#[test]
fn the_kubernetes_manifests_validate_and_mount_a_valid_config() {
    let dir = Path::new(DIR);
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let mut manifests = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                kustomization.contains(&format!("  - {name}\n")),
                "{name} is not in kustomization.yaml"
            );
            manifests.push(e.path());
        }
    }
    manifests.sort();
    assert!(manifests.len() >= 7, "{manifests:?}");
    let out = validate(&manifests);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    for kind in [
        "deployment",
        "service",
        "poddisruptionbudget",
        "networkpolicy",
        "persistentvolumeclaim",
        "secret",
    ] {
        assert!(
            stdout(&out).contains(&format!("passed for resource {kind}/")),
            "{kind}: {}",
            stdout(&out)
        );
    }
    // The check can fail: a wrong type in the Deployment is caught.
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    let broken_dir = tempfile::tempdir().unwrap();
    let broken = broken_dir.path().join("deployment.yaml");
    std::fs::write(
        &broken,
        deployment.replace("replicas: 3", "replicas: three"),
    )
    .unwrap();
    assert!(
        !validate(&[broken]).status.success(),
        "a broken manifest passed"
    );

    // Hardening: non-root, read-only root, no privilege escalation, probes.
    for needle in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "path: /healthz",
        "path: /readyz",
        "containerPort: 2222",
        "containerPort: 9100",
        "replicas: 3",
    ] {
        assert!(
            deployment.contains(needle),
            "deployment.yaml lacks {needle}"
        );
    }

    // The mounted config is valid (keys where the Secret puts them) and
    // listens where the manifests send traffic.
    let keys = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/bi-alpha.pub"),
        keys.path().join("bi-alpha.pub"),
    )
    .unwrap();
    let etc = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(dir.join("udstil.toml"))
        .unwrap()
        .replace("/etc/udstil-keys/", &format!("{}/", keys.path().display()));
    std::fs::write(etc.path().join("udstil.toml"), text).unwrap();
    std::fs::copy(
        dir.join("announcements.toml"),
        etc.path().join("announcements.toml"),
    )
    .unwrap();
    let config =
        udstil::config::load(&etc.path().join("udstil.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.sftp.listen.port(), 2222);
    assert_eq!(config.http_listen.unwrap().port(), 9100);
    assert!(
        config
            .state_url
            .as_deref()
            .unwrap()
            .starts_with("postgres://"),
        "replicas share a PostgreSQL state database"
    );
    assert_eq!(config.storage_root, Path::new("/var/lib/udstil/tree"));
    assert!(deployment.contains("mountPath: /var/lib/udstil/tree"));
}
