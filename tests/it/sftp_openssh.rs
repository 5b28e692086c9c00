//! SFTP as suppliers use it: the OpenSSH `sftp` client in batch mode over TCP.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::*;
use arrow_array::{Array, Int64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use udstil::authority::AuthorityId;
use udstil::load::Manifest;
use udstil::source::Source;

/// Keys (as text) in every Parquet file of a downloaded load folder, after
/// checking SHA256SUMS and the manifest against the files.
fn check_load_folder(dir: &Path, key: &str, forbidden: &[&str]) -> BTreeSet<String> {
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), manifest.files.len());
    let mut keys = BTreeSet::new();
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ").unwrap();
        let path = dir.join(name);
        assert_eq!(sha256_file(&path), sum, "{}", path.display());
        let entry = manifest.files.iter().find(|f| f.name == name).unwrap();
        assert_eq!(entry.sha256, sum);
        assert_eq!(entry.bytes, std::fs::metadata(&path).unwrap().len());
        if name.ends_with(".zip") {
            check_legacy_zip(&path, &manifest);
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut rows = 0;
        for batch in reader {
            let batch = batch.unwrap();
            for f in forbidden {
                assert!(
                    batch.schema().field_with_name(f).is_err(),
                    "column {f} published"
                );
            }
            rows += batch.num_rows();
            let col = batch.column_by_name(key).unwrap();
            if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
                keys.extend(a.iter().map(|v| v.unwrap().to_string()));
            } else {
                let a = col.as_any().downcast_ref::<StringArray>().unwrap();
                keys.extend(a.iter().map(|v| v.unwrap().to_string()));
            }
        }
        assert_eq!(rows as u64, entry.rows);
    }
    assert_eq!(
        keys.len() as u64,
        manifest.rows,
        "keys are unique and all counted"
    );
    keys
}

/// The legacy SUP file: one CSV in the zip, a fixed-width header whose record
/// count equals the manifest's rows, the column line, then exactly that many records.
fn check_legacy_zip(path: &Path, manifest: &Manifest) {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    assert_eq!(zip.len(), 1);
    let mut csv = zip.by_index(0).unwrap();
    assert_eq!(
        csv.name().unwrap(),
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".zip", ".csv")
    );
    let mut text = String::new();
    csv.read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines.last(), Some(&""), "records end in CRLF");
    let header = lines[0];
    assert_eq!(header.len(), 46, "{header}");
    assert_eq!(header[..15].parse::<u64>().unwrap(), manifest.rows);
    assert_eq!(&header[45..], "F");
    let columns: Vec<&str> = lines[1].split("¤|¤|¤").collect();
    let names: Vec<&str> = manifest.schema.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(columns, names);
    assert_eq!(lines.len() as u64 - 3, manifest.rows);
    for record in &lines[2..lines.len() - 1] {
        assert_eq!(record.split("¤|¤|¤").count(), names.len(), "{record}");
    }
}

/// The keys an authority may see in an area, straight from the source.
async fn expected_keys(
    env: &Env,
    table: &str,
    key: &str,
    route: &str,
    authority: AuthorityId,
) -> BTreeSet<String> {
    let Source::Sqlite(pool) = Source::connect(&env.config.source_url).await.unwrap() else {
        unreachable!("the demo uses SQLite")
    };
    let sql = format!("SELECT CAST({key} AS TEXT) FROM {table} WHERE {route} = ?1 AND NOT kladde");
    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(authority.code_str())
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        !rows.is_empty(),
        "the fixture gives {authority} rows in {table}"
    );
    rows.into_iter().map(|(k,)| k).collect()
}

fn only_load_folder(dir: &Path) -> std::path::PathBuf {
    let mut loads: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(loads.len(), 1, "{}", dir.display());
    loads.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_suppliers_download_exactly_their_authorities_rows() {
    let env = start(1500).await;
    let dl = tempfile::tempdir().unwrap();
    let alpha = dl.path().join("alpha");
    let beta = dl.path().join("beta");
    std::fs::create_dir_all(&alpha).unwrap();
    std::fs::create_dir_all(&beta).unwrap();

    let out = env.sftp(
        "bi-alpha",
        &format!(
            "ls /\nls /kommune\nls /kommune/101\nget -r /kommune {}\n",
            alpha.display()
        ),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.contains("kommune/101")
            && listing.contains("kommune/147")
            && listing.contains("kommune/151"),
        "{listing}"
    );
    assert!(
        !listing.contains("/751") && !listing.contains("akasse"),
        "{listing}"
    );

    let out = env.sftp(
        "bi-beta",
        &format!(
            "ls /kommune\nls /kommune/101\nget -r /kommune {}\n",
            beta.display()
        ),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.contains("kommune/101/joblog")
            && !listing.contains("plans-and-activities")
            && !listing.contains("/751"),
        "{listing}"
    );

    // What each downloaded: exactly the permitted authorities and areas.
    let dirs = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        dirs(&alpha.join("kommune")),
        BTreeSet::from(["101".into(), "147".into(), "151".into()])
    );
    assert_eq!(
        dirs(&alpha.join("kommune/147")),
        BTreeSet::from(["joblog".into(), "plans-and-activities".into()])
    );
    assert_eq!(dirs(&beta.join("kommune")), BTreeSet::from(["101".into()]));
    assert_eq!(
        dirs(&beta.join("kommune/101")),
        BTreeSet::from(["joblog".into()])
    );

    for code in ["101", "147", "151"] {
        let authority: AuthorityId = format!("kommune/{code}").parse().unwrap();
        let base = alpha.join("kommune").join(code);
        let load = only_load_folder(&base.join("joblog/v1/full"));
        let got = check_load_folder(&load, "joblog_id", &["kladde", "skat_indkomst"]);
        assert_eq!(
            got,
            expected_keys(&env, "joblog", "joblog_id", "kommune_kode", authority).await,
            "joblog {code}"
        );
        let load = only_load_folder(&base.join("plans-and-activities/v1/full"));
        let got = check_load_folder(&load, "aktivitet_id", &["kladde", "anden_aktoer_notat"]);
        assert_eq!(
            got,
            expected_keys(
                &env,
                "plan_aktivitet",
                "aktivitet_id",
                "kommune_kode",
                authority
            )
            .await,
            "plans {code}"
        );
    }
    let load = only_load_folder(&beta.join("kommune/101/joblog/v1/full"));
    let got = check_load_folder(&load, "joblog_id", &["kladde", "skat_indkomst"]);
    assert_eq!(
        got,
        expected_keys(
            &env,
            "joblog",
            "joblog_id",
            "kommune_kode",
            "kommune/101".parse().unwrap()
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fund_supplier_sees_the_akasse_side_and_gamma_sees_nothing() {
    let env = start(800).await;
    let dl = tempfile::tempdir().unwrap();
    let out = env.sftp(
        "bi-delta",
        &format!(
            "ls /\nls /akasse\nget -r /akasse/902 {}\n",
            dl.path().display()
        ),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.contains("akasse/902")
            && listing.contains("akasse/905")
            && !listing.contains("kommune"),
        "{listing}"
    );
    let load = only_load_folder(&dl.path().join("902/unemployment-fund-membership/v1/full"));
    let got = check_load_folder(&load, "medlemskab_id", &["kladde", "skat_indkomst"]);
    assert_eq!(
        got,
        expected_keys(
            &env,
            "akasse_medlemskab",
            "medlemskab_id",
            "akasse_kode",
            "akasse/902".parse().unwrap()
        )
        .await
    );

    // Step 1 passes (login works), step 2 shows nothing: the cooperation agreement ended.
    let out = env.sftp("bi-gamma", "ls -a /\nls /kommune\n", &[]);
    assert!(
        !out.status.success(),
        "listing /kommune must fail for bi-gamma"
    );
    let listing = stdout(&out);
    let root: Vec<&str> = listing
        .split("sftp> ls -a /\n")
        .nth(1)
        .and_then(|rest| rest.split("sftp>").next())
        .unwrap_or_else(|| panic!("no root listing in {listing}"))
        .split_whitespace()
        .collect();
    assert_eq!(root, ["/.", "/.."], "bi-gamma's root holds only . and ..");
    assert!(
        stderr(&out).contains("\"/kommune\" not found"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_escapes_fail_and_leave_the_tree_unchanged() {
    let env = start(300).await;
    let before = snapshot(env.root());
    let local = env.path().join("upload.txt");
    std::fs::write(&local, "x").unwrap();
    let load = std::fs::read_dir(env.root().join("kommune/101/joblog/v1/full"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let file = format!(
        "/kommune/101/joblog/v1/full/{}/MANIFEST.json",
        load.to_string_lossy()
    );
    // Each command alone, so one failure does not hide the next.
    let attempts = [
        format!("put {} /kommune/101/joblog/new.txt", local.display()),
        format!("put {} {file}", local.display()),
        "mkdir /kommune/101/joblog/newdir".to_string(),
        "mkdir /kommune/999".to_string(),
        format!("rm {file}"),
        "rmdir /kommune/101/joblog/v1".to_string(),
        format!("rename {file} /kommune/101/joblog/x.json"),
        format!("chmod 777 {file}"),
        format!("ln -s {file} /kommune/101/joblog/link"),
        "get /../../../../etc/passwd".to_string(),
        "get /kommune/147/../../etc/hostname".to_string(),
        "ls /kommune/751".to_string(),
        "ls /akasse/902".to_string(),
        "get /kommune/101/joblog/../../751/joblog/v1/full".to_string(),
        format!("ls /kommune/101/{}", "a/".repeat(2100)),
    ];
    for cmd in &attempts {
        let out = env.sftp("bi-beta", &format!("{cmd}\n"), &[]);
        assert!(!out.status.success(), "{cmd} succeeded: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("Permission denied")
                || err.contains("No such file")
                || err.contains("not found")
                || err.contains("Can't ls"),
            "{cmd}: {err}"
        );
    }
    assert_eq!(snapshot(env.root()), before, "the tree changed");
    // `cd ..` at the root stays at the root, as in a chroot.
    let out = env.sftp("bi-beta", "cd ../../..\npwd\nls\n", &[]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("Remote working directory: /\n"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_other_users_keys_and_passwords_are_refused() {
    let env = start(100).await;
    let stranger = env.path().join("stranger");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/stranger"),
        &stranger,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stranger, std::fs::Permissions::from_mode(0o600)).unwrap();
    let addr = env.addr;
    let refused = |user: &str, key: &Path| {
        let out = tokio::task::block_in_place(|| sftp_with_key(addr, user, key, "ls\n", &[]));
        assert!(!out.status.success(), "{user} logged in");
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
    };
    refused("bi-alpha", &stranger);
    refused("nobody", &stranger);
    // A real supplier's key under another supplier's name.
    refused("bi-beta", &env.key("bi-alpha"));
    // Password and keyboard-interactive are not offered at all.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("ssh")
            .args(ssh_opts())
            .args([
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "PubkeyAuthentication=no",
            ])
            .args([
                "-p",
                &addr.port().to_string(),
                "-s",
                &format!("bi-alpha@{}", addr.ip()),
                "sftp",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied (publickey)"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_exec_and_forwarding_are_refused() {
    let env = start(100).await;
    let ssh = |args: &[&str]| env.ssh("bi-alpha", args);
    let target = format!("bi-alpha@{}", env.addr.ip());
    let out = ssh(&[&target, "cat /etc/passwd"]);
    assert!(
        !out.status.success() && !stdout(&out).contains("root:"),
        "exec ran: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("SFTP only"), "{}", stderr(&out));
    // A plain login is told why it ends.
    let out = ssh(&["-T", &target]);
    assert!(
        !out.status.success() && stdout(&out).is_empty(),
        "shell ran"
    );
    assert!(stderr(&out).contains("SFTP only"), "{}", stderr(&out));
    let out = ssh(&[
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        "127.0.0.1:0:127.0.0.1:22",
        &target,
    ]);
    assert!(!out.status.success(), "local forwarding accepted");
    let out = ssh(&["-W", "127.0.0.1:22", &target]);
    assert!(
        !out.status.success() && !stdout(&out).starts_with("SSH-"),
        "direct-tcpip accepted"
    );
}

/// 1 GiB through many outstanding requests and large reads must not stall
/// (the russh/russh-sftp window deadlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_with_many_outstanding_large_reads() {
    let env = start(50).await;
    let dir = env
        .root()
        .join("kommune/101/joblog/v1/full/000999_20261122T000000Z");
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for i in 0..1024u32 {
            block[..4].copy_from_slice(&i.to_le_bytes());
            block[(1 << 20) - 4..].copy_from_slice(&i.to_be_bytes());
            f.write_all(&block).unwrap();
        }
    }
    let want = sha256_file(&big);
    let dl = tempfile::tempdir().unwrap();
    for (i, extra) in [&["-R", "256"][..], &["-R", "256", "-B", "261120"][..]]
        .iter()
        .enumerate()
    {
        let local = dl.path().join(format!("big{i}.bin"));
        let out = env.sftp(
            "bi-alpha",
            &format!(
                "get /kommune/101/joblog/v1/full/000999_20261122T000000Z/big.bin {}\n",
                local.display()
            ),
            extra,
        );
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        assert_eq!(sha256_file(&local), want, "{extra:?}");
        std::fs::remove_file(&local).unwrap();
    }
}

/// `md5sum`, `sha1sum` and `sha256sum PATH` are answered by udstil itself
/// for files the supplier may read (so rclone `check` compares hashes), with
/// the same access check as a read; input-only probes hash standard input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_are_answered_for_visible_files_only() {
    let env = start(100).await;
    let target = format!("bi-alpha@{}", env.addr.ip());
    let ssh = |command: &str| env.ssh("bi-alpha", &[&target, command]);
    let full = env.root().join("kommune/101/joblog/v1/full");
    let load = only_load_folder(&full);
    let real = load.join("part-00000.parquet");
    let path = format!(
        "/kommune/101/joblog/v1/full/{}/part-00000.parquet",
        load.file_name().unwrap().to_string_lossy()
    );
    let out = ssh(&format!("sha256sum {path}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}  {path}\n", sha256_file(&real)));
    // The hashes coreutils gives.
    for tool in ["md5sum", "sha1sum"] {
        let want = std::process::Command::new(tool)
            .arg(&real)
            .output()
            .unwrap();
        let want = stdout(&want).split_whitespace().next().unwrap().to_string();
        let out = ssh(&format!("{tool} '{path}'"));
        assert_eq!(stdout(&out), format!("{want}  {path}\n"), "{tool}");
    }
    // rclone's probe: a hash of empty input.
    let out = ssh("md5sum");
    assert_eq!(stdout(&out), "d41d8cd98f00b204e9800998ecf8427e  -\n");
    // Hidden and missing files are not found, and nothing reaches a shell.
    for command in [
        "sha256sum /kommune/751/joblog/v1".to_string(),
        format!("sha256sum {path}; id"),
        "sha256sum /etc/passwd".to_string(),
    ] {
        let out = ssh(&command);
        assert!(!out.status.success(), "{command}: {}", stdout(&out));
        assert!(stdout(&out).is_empty(), "{command}: {}", stdout(&out));
    }
}

/// Regression: Debian 12's curl (libssh2 1.10, no AEAD ciphers, no
/// encrypt-then-MAC) found no common cipher. It downloads a load now, and
/// the files match SHA256SUMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_libssh2_downloads_a_load() {
    let env = start(100).await;
    let full = env.root().join("kommune/101/joblog/v1/full");
    let load = only_load_folder(&full);
    let view = format!(
        "/kommune/101/joblog/v1/full/{}",
        load.file_name().unwrap().to_string_lossy()
    );
    let got = tempfile::tempdir().unwrap();
    let key = env.key("bi-alpha");
    let curl = |name: &str| {
        tokio::task::block_in_place(|| {
            std::process::Command::new("curl")
                .args(["-sS", "--insecure", "--key"])
                .arg(&key)
                .arg("--pubkey")
                .arg(key.with_extension("pub"))
                .arg(format!(
                    "sftp://bi-alpha@127.0.0.1:{}{view}/{name}",
                    env.addr.port()
                ))
                .arg("-o")
                .arg(got.path().join(name))
                .output()
                .unwrap()
        })
    };
    for name in ["SHA256SUMS", "MANIFEST.json"] {
        let out = curl(name);
        assert!(out.status.success(), "curl {name}: {}", stderr(&out));
    }
    let sums = std::fs::read_to_string(got.path().join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let name = line.split_once("  ").unwrap().1;
        let out = curl(name);
        assert!(out.status.success(), "curl {name}: {}", stderr(&out));
    }
    assert_load_verifies("curl", got.path());
}

/// The clients BI suppliers use, each run for real: it downloads a load,
/// and `sha256sum -c SHA256SUMS` checks what it got. rclone's `check` must
/// compare hashes (answered by udstil over exec), not only sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_lftp_paramiko_asyncssh_and_node_download_a_load() {
    let env = start(100).await;
    let full = env.root().join("kommune/101/joblog/v1/full");
    let load = only_load_folder(&full);
    let view = format!(
        "/kommune/101/joblog/v1/full/{}",
        load.file_name().unwrap().to_string_lossy()
    );
    let key = env.key("bi-alpha");
    let port = env.addr.port().to_string();
    let run = |program: &str, args: &[&str]| {
        tokio::task::block_in_place(|| {
            std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}"))
        })
    };
    let key_s = key.to_str().unwrap();
    let remote = format!(":sftp:{view}");
    let rclone_flags = [
        "--sftp-host",
        "127.0.0.1",
        "--sftp-port",
        &port,
        "--sftp-user",
        "bi-alpha",
        "--sftp-key-file",
        key_s,
    ];

    // rclone: copy, then `check` by hash.
    let got = tempfile::tempdir().unwrap();
    let dest = got.path().to_str().unwrap();
    let mut args = vec!["copy", remote.as_str(), dest];
    args.extend(rclone_flags);
    let out = run("rclone", &args);
    assert!(out.status.success(), "rclone copy: {}", stderr(&out));
    assert_load_verifies("rclone", got.path());
    let mut args = vec!["check", remote.as_str(), dest];
    args.extend(rclone_flags);
    let out = run("rclone", &args);
    assert!(out.status.success(), "rclone check: {}", stderr(&out));
    // Without a hash in common rclone says "N hashes could not be checked".
    assert!(
        !stderr(&out).contains("could not be checked"),
        "rclone compared sizes only: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("0 differences found") && stderr(&out).contains("matching files"),
        "{}",
        stderr(&out)
    );
    // The control: told not to ask for hashes, rclone says so.
    args.push("--sftp-disable-hashcheck");
    let out = run("rclone", &args);
    assert!(
        stderr(&out).contains("could not be checked"),
        "{}",
        stderr(&out)
    );

    // lftp over OpenSSH's ssh.
    let got = tempfile::tempdir().unwrap();
    let script = format!(
        "set sftp:connect-program 'ssh -a -x -i {key_s} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o BatchMode=yes'; \
         open -u bi-alpha, -p {port} sftp://127.0.0.1; mirror {view} {}; bye",
        got.path().display()
    );
    let out = run("lftp", &["-c", &script]);
    assert!(out.status.success(), "lftp: {}", stderr(&out));
    assert_load_verifies("lftp", got.path());

    // paramiko, then asyncssh.
    let paramiko = r#"
import os, sys, paramiko
host, port, key, src, dst = sys.argv[1:]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect(host, int(port), username="bi-alpha", key_filename=key, allow_agent=False, look_for_keys=False)
s = c.open_sftp()
for name in s.listdir(src):
    s.get(src + "/" + name, os.path.join(dst, name))
c.close()
"#;
    let asyncssh = r#"
import asyncio, sys, asyncssh
host, port, key, src, dst = sys.argv[1:]
async def main():
    async with asyncssh.connect(host, int(port), username="bi-alpha", client_keys=[key], known_hosts=None) as c:
        async with c.start_sftp_client() as s:
            await s.mget(src + "/*", dst)
asyncio.run(main())
"#;
    for (client, code) in [("paramiko", paramiko), ("asyncssh", asyncssh)] {
        let got = tempfile::tempdir().unwrap();
        let out = run(
            "python3",
            &[
                "-c",
                code,
                "127.0.0.1",
                &port,
                key_s,
                &view,
                got.path().to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{client}: {}", stderr(&out));
        assert_load_verifies(client, got.path());
    }

    // Node's ssh2-sftp-client (installed by `.ci/run` into tests/clients).
    let got = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node_sftp.js");
    let out = run(
        "node",
        &[
            script,
            "127.0.0.1",
            &port,
            key_s,
            &view,
            got.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "ssh2-sftp-client: {}", stderr(&out));
    assert_load_verifies("ssh2-sftp-client", got.path());
}

/// JSch 0.1.55 (Debian's libjsch-java, bundled by older ETL tools) shares no
/// key exchange with the default profile; with `legacy_profile = true` it
/// logs in with an ECDSA key and downloads a load that SHA256SUMS verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsch_needs_the_legacy_profile_and_then_downloads_a_load() {
    let classes = tempfile::tempdir().unwrap();
    let jar = "/usr/share/java/jsch.jar";
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/JschFetch.java");
    let out = std::process::Command::new("javac")
        .args(["-cp", jar, "-d"])
        .arg(classes.path())
        .arg(source)
        .output()
        .expect("javac is installed");
    assert!(out.status.success(), "javac: {}", stderr(&out));
    let classpath = format!("{}:{jar}", classes.path().display());

    // JSch 0.1.55 reads PEM private keys and knows no ed25519.
    let with_jsch_key = |dir: &Path, text: &mut String, legacy: bool| {
        keygen(
            dir,
            "bi-alpha-jsch",
            &["-t", "ecdsa", "-b", "256", "-m", "PEM"],
        );
        *text = text.replacen(
            "key_files = [\"keys/bi-alpha.pub\"]",
            "key_files = [\"keys/bi-alpha.pub\", \"keys/bi-alpha-jsch.pub\"]",
            1,
        );
        assert!(text.contains("bi-alpha-jsch.pub"), "demo config moved");
        if legacy {
            *text = text.replacen("[sftp]\n", "[sftp]\nlegacy_profile = true\n", 1);
        }
    };
    let fetch = |env: &Env, got: &Path| {
        let full = env.root().join("kommune/101/joblog/v1/full");
        let load = only_load_folder(&full);
        let view = format!(
            "/kommune/101/joblog/v1/full/{}",
            load.file_name().unwrap().to_string_lossy()
        );
        tokio::task::block_in_place(|| {
            std::process::Command::new("java")
                .args(["-cp", &classpath, "JschFetch", "127.0.0.1"])
                .arg(env.addr.port().to_string())
                .arg("bi-alpha")
                .arg(env.key("bi-alpha-jsch"))
                .arg(view)
                .arg(got)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("java is installed")
        })
    };

    // The default profile: no key exchange in common.
    let env = start_with(100, |dir, text| with_jsch_key(dir, text, false)).await;
    let got = tempfile::tempdir().unwrap();
    let out = fetch(&env, got.path());
    assert!(
        !out.status.success(),
        "JSch got in without the legacy profile"
    );
    assert!(
        stderr(&out).contains("Algorithm negotiation fail"),
        "{}",
        stderr(&out)
    );

    let env = start_with(100, |dir, text| with_jsch_key(dir, text, true)).await;
    assert!(env.config.sftp.legacy_host_key.as_ref().unwrap().exists());
    let got = tempfile::tempdir().unwrap();
    let out = fetch(&env, got.path());
    assert!(out.status.success(), "JSch: {}", stderr(&out));
    // What was negotiated, as JSch logs it.
    for step in [
        "SSH_MSG_KEX_ECDH_INIT sent",
        "(ECDSA) to the list of known hosts",
        "kex: server->client aes128-ctr hmac-sha2-256",
    ] {
        assert!(stderr(&out).contains(step), "{step}: {}", stderr(&out));
    }
    assert_load_verifies("JSch", got.path());
}

/// docs/suppliers.md as a supplier follows it: fetch an area's folder with
/// `sftp`, verify it, and run the guide's replay script exactly as written
/// (pyarrow). The rows it rebuilds from a full load and a delta are exactly
/// those of a fresh full load at the same watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supplier_guides_replay_script_rebuilds_a_fresh_full_load() {
    let env = start(300).await;
    let source = Source::connect(&env.config.source_url).await.unwrap();
    udstil::fixtures::mutate(&source, 400, 3).await.unwrap();
    source.close().await;
    udstil::app::run_loads(&env.config, udstil::app::LoadRequest::delta(None))
        .await
        .unwrap();

    let got = tempfile::tempdir().unwrap();
    let out = env.sftp(
        "bi-alpha",
        &format!(
            "get -R /kommune/101/joblog/v1 {}/v1\n",
            got.path().display()
        ),
        &[],
    );
    assert!(out.status.success(), "sftp: {}", stderr(&out));
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/suppliers.md")).unwrap();
    let script = guide
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/suppliers.md has the replay script");
    std::fs::write(got.path().join("replay.py"), script).unwrap();
    for load in ["full", "delta"] {
        let dir = got.path().join("v1").join(load);
        let folder = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_load_verifies("sftp", &folder);
    }
    let run = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            std::process::Command::new("python3")
                .args(args)
                .current_dir(got.path())
                .output()
                .unwrap()
        })
    };
    let out = run(&["replay.py", "v1"]);
    assert!(out.status.success(), "replay.py: {}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains(": full load, ") && printed.contains(" changes, "),
        "{printed}"
    );

    // The truth: a fresh full load, read from the tree, against the script's rows.
    let fresh = udstil::app::run_loads(&env.config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    let fresh_dir = env
        .root()
        .join("kommune/101/joblog/v1/full")
        .join(fresh[0].load_id.to_string());
    let compare = format!(
        r#"
import json, pathlib, runpy, sys
import pyarrow.parquet as pq
sys.argv = ["replay.py", "v1"]
state = runpy.run_path("replay.py")["state"]
fresh = pathlib.Path({fresh:?})
m = json.loads((fresh / "MANIFEST.json").read_text())
truth = {{}}
for f in m["files"]:
    if f["name"].endswith(".parquet"):
        for r in pq.read_table(fresh / f["name"]).to_pylist():
            truth[tuple(r[k] for k in m["key"])] = r
print("replayed", len(state), "fresh", len(truth), "equal", state == truth)
"#,
        fresh = fresh_dir.display().to_string()
    );
    let out = run(&["-c", &compare]);
    assert!(out.status.success(), "compare: {}", stderr(&out));
    let last = stdout(&out).lines().last().unwrap_or_default().to_string();
    assert!(last.ends_with("equal True"), "{}", stdout(&out));
    assert!(!last.contains("replayed 0 "), "{last}");
}

/// The data dictionary as a supplier meets it: `DICTIONARY.md` in the
/// version folder, fetched with `sftp`, and the descriptions printed from a
/// published Parquet file by docs/suppliers.md's pyarrow script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dictionary_is_in_the_tree_and_in_the_parquet_metadata() {
    let env = start(100).await;
    let got = tempfile::tempdir().unwrap();
    let out = env.sftp(
        "bi-alpha",
        &format!(
            "ls /kommune/101/joblog/v1\nget -R /kommune/101/joblog/v1 {}/v1\n",
            got.path().display()
        ),
        &[],
    );
    assert!(out.status.success(), "sftp: {}", stderr(&out));
    assert!(stdout(&out).contains("DICTIONARY.md"), "{}", stdout(&out));
    let md = std::fs::read_to_string(got.path().join("v1/DICTIONARY.md")).unwrap();
    println!("{md}");
    assert!(
        md.starts_with("# joblog, version 1\n\nJoblog: the job applications"),
        "{md}"
    );
    assert!(
        md.contains("| `postnr` | Utf8 | yes | The job's postcode. |"),
        "{md}"
    );
    assert!(md.contains("| `_op` | Utf8 | no | I (insert)"), "{md}");
    assert!(
        !md.contains("skat_indkomst") && !md.contains("kladde"),
        "unpublished columns: {md}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(got.path().join("v1/DICTIONARY.json")).unwrap())
            .unwrap();
    assert_eq!(json["columns"][0]["name"], "joblog_id");

    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/suppliers.md")).unwrap();
    let script = guide
        .split("```python\n")
        .find(|block| block.starts_with("# describe.py"))
        .and_then(|rest| rest.split("```").next())
        .expect("docs/suppliers.md has describe.py");
    std::fs::write(got.path().join("describe.py"), script).unwrap();
    let full = std::fs::read_dir(got.path().join("v1/full"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = std::process::Command::new("python3")
        .arg("describe.py")
        .arg(full.join("part-00000.parquet"))
        .current_dir(got.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "describe.py: {}", stderr(&out));
    let printed = stdout(&out);
    println!("{printed}");
    assert!(
        printed.contains("postnr: The job's postcode.\n"),
        "{printed}"
    );
    assert!(
        printed.contains("joblog_id: The joblog entry's id.\n"),
        "{printed}"
    );
}
