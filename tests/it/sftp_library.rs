//! SFTP through a client library (russh + russh-sftp's client), as a
//! supplier's own loader would use it: list, stat, read at offsets, and be
//! refused writes.

use std::sync::Arc;

use crate::common::*;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::OpenFlags;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The SSH handle is returned too: dropping it would end the session.
async fn connect(
    env: &Env,
    supplier: &str,
) -> (russh::client::Handle<AcceptAnyHostKey>, SftpSession) {
    library_session(env.addr, supplier, &env.key(supplier))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_client_lists_reads_and_is_refused_writes() {
    let env = start(400).await;
    let (_ssh, sftp) = connect(&env, "bi-delta").await;
    assert_eq!(sftp.canonicalize(".").await.unwrap(), "/");
    let names: Vec<String> = sftp
        .read_dir("/akasse")
        .await
        .unwrap()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["902", "905"]);
    let loads: Vec<String> = sftp
        .read_dir("/akasse/905/unemployment-fund-membership/v1/full")
        .await
        .unwrap()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(loads.len(), 1);
    let dir = format!(
        "/akasse/905/unemployment-fund-membership/v1/full/{}",
        loads[0]
    );

    // Whole file through the library equals SHA256SUMS.
    let mut sums = String::new();
    sftp.open(format!("{dir}/SHA256SUMS"))
        .await
        .unwrap()
        .read_to_string(&mut sums)
        .await
        .unwrap();
    let (sum, name) = sums.lines().next().unwrap().split_once("  ").unwrap();
    let path = format!("{dir}/{name}");
    let mut data = Vec::new();
    sftp.open(&path)
        .await
        .unwrap()
        .read_to_end(&mut data)
        .await
        .unwrap();
    assert_eq!(hex::encode(Sha256::digest(&data)), sum);
    assert_eq!(
        sftp.metadata(&path).await.unwrap().size,
        Some(data.len() as u64)
    );

    // A read at an offset returns the same bytes as the file there.
    let mut f = sftp.open(&path).await.unwrap();
    f.seek(std::io::SeekFrom::Start(100)).await.unwrap();
    let mut part = vec![0u8; 64];
    f.read_exact(&mut part).await.unwrap();
    assert_eq!(part, data[100..164]);

    // Writes of every kind are refused; hidden authorities do not exist.
    assert!(sftp.open_with_flags(&path, OpenFlags::WRITE).await.is_err());
    assert!(sftp.create("/akasse/905/new").await.is_err());
    assert!(sftp.create_dir("/akasse/905/x").await.is_err());
    assert!(sftp.remove_file(&path).await.is_err());
    assert!(sftp.rename(&path, "/akasse/905/y").await.is_err());
    assert!(sftp.read_dir("/kommune").await.is_err());
    assert!(sftp.metadata("/akasse/901").await.is_err());
    assert!(sftp.try_exists("/akasse/902").await.unwrap());
    assert!(!sftp.try_exists("/akasse/903").await.unwrap());
}

/// Many sessions at once, each reading the same file: none stalls or corrupts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_library_sessions_read_consistently() {
    let env = start(400).await;
    let (_ssh, sftp) = connect(&env, "bi-alpha").await;
    let full = "/kommune/101/joblog/v1/full";
    let load = first_entry(&sftp, full).await;
    let path = format!("{full}/{load}/part-00000.parquet");
    let want = sha256_file(&env.root().join(&path[1..]));
    let env = Arc::new(env);
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let env = env.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let (_ssh, sftp) = connect(&env, "bi-alpha").await;
            let mut data = Vec::new();
            sftp.open(&path)
                .await
                .unwrap()
                .read_to_end(&mut data)
                .await
                .unwrap();
            hex::encode(Sha256::digest(&data))
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), want);
    }
}

/// Retention removes old loads after a new one publishes; a download that
/// already started finishes with the right bytes, and the removed load
/// leaves the listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_in_progress_survives_retention() {
    let env = start(400).await;
    let (_ssh, sftp) = connect(&env, "bi-alpha").await;
    let full = "/kommune/101/joblog/v1/full";
    let first = first_entry(&sftp, full).await;
    let path = format!("{full}/{first}/part-00000.parquet");
    let want = sha256_file(&env.root().join(&path[1..]));
    let mut f = sftp.open(&path).await.unwrap();
    let mut head = vec![0u8; 1000];
    f.read_exact(&mut head).await.unwrap();

    let mut config = (*env.config).clone();
    config
        .areas
        .iter_mut()
        .for_each(|a| a.retention_full_loads = 1);
    let reports = udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    assert!(reports[0].removed > 0, "retention removed nothing");
    assert!(
        !env.root().join(&path[1..]).exists(),
        "the old load is still on disk"
    );
    let listed: Vec<String> = sftp
        .read_dir(full)
        .await
        .unwrap()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(listed, [reports[0].load_id.to_string()]);

    let mut rest = Vec::new();
    f.read_to_end(&mut rest).await.unwrap();
    head.extend(rest);
    assert_eq!(hex::encode(Sha256::digest(&head)), want);
}

/// Waits for the server's answer to a channel request that wants one.
async fn reply(ch: &mut russh::Channel<russh::client::Msg>) -> &'static str {
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), ch.wait()).await {
            Err(_) => return "no reply",
            Ok(None) => return "closed",
            Ok(Some(russh::ChannelMsg::Success)) => return "success",
            Ok(Some(russh::ChannelMsg::Failure)) => return "failure",
            Ok(Some(_)) => continue,
        }
    }
}

/// Regression: an `x11-req` and an `env` that wanted a reply got none, and
/// after four closed non-SFTP channels a fifth was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_wanting_a_reply_gets_one_and_closed_channels_free_their_place() {
    let env = start(40).await;
    let ssh = library_login(env.addr, "bi-alpha", &env.key("bi-alpha"))
        .await
        .unwrap();
    let mut ch = ssh.channel_open_session().await.unwrap();
    ch.request_x11(true, false, "MIT-MAGIC-COOKIE-1", "00ff", 0)
        .await
        .unwrap();
    assert_eq!(reply(&mut ch).await, "failure", "x11-req");
    ch.set_env(true, "LANG", "da_DK.UTF-8").await.unwrap();
    assert_eq!(reply(&mut ch).await, "failure", "env");
    ch.close().await.unwrap();
    for i in 0..8 {
        let ch = ssh
            .channel_open_session()
            .await
            .unwrap_or_else(|e| panic!("channel {i} refused: {e}"));
        ch.close().await.unwrap();
        // Let the server see the close before the next open.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // SFTP still opens on the same connection.
    let ch = ssh.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let sftp = SftpSession::new(ch.into_stream()).await.unwrap();
    assert_eq!(sftp.canonicalize(".").await.unwrap(), "/");
}

/// A supplier reaching for an authority it may not read, by stat or
/// realpath rather than a listing, is audited as a refused `lookup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_of_hidden_authorities_are_audited_as_refusals() {
    let env = start(40).await;
    let (_ssh, sftp) = connect(&env, "bi-beta").await;
    assert!(sftp.metadata("/kommune/147").await.is_err());
    assert!(sftp.canonicalize("/kommune/147/joblog").await.is_err());
    assert!(sftp.metadata("/kommune/101").await.is_ok());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = udstil(&["audit", "query", "--action", "lookup"], &env.config_path);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        let refused: Vec<&str> = text.lines().filter(|l| l.contains("bi-beta")).collect();
        if refused.len() >= 2 {
            assert!(
                refused
                    .iter()
                    .all(|l| l.contains("kommune/147") && l.contains("refused")),
                "{text}"
            );
            assert!(
                !text.contains("kommune/101"),
                "an allowed lookup was recorded: {text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refused lookups audited: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Raw SFTP on a channel: requests sent all at once are each answered
/// under their own id (reads of two files, a stat, a malformed request
/// between them), the reads' bytes are the file's, and a request whose
/// fields are broken is answered BAD_MESSAGE without ending the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_by_id_and_a_malformed_one_does_not_end_the_session() {
    use bytes::BytesMut;
    use udstil::sftp::wire::{Attrs, Request, put_request};

    let env = start(400).await;
    let (ssh, sftp) = connect(&env, "bi-delta").await;
    let full = "/akasse/905/unemployment-fund-membership/v1/full";
    let load = first_entry(&sftp, full).await;
    let dir = format!("{full}/{load}");
    let mut names: Vec<String> = sftp
        .read_dir(&dir)
        .await
        .unwrap()
        .map(|e| e.file_name())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    let mut files = Vec::new();
    for name in ["MANIFEST.json", "SHA256SUMS"] {
        assert!(names.iter().any(|n| n == name), "{names:?}");
        let mut data = Vec::new();
        sftp.open(format!("{dir}/{name}"))
            .await
            .unwrap()
            .read_to_end(&mut data)
            .await
            .unwrap();
        files.push((format!("{dir}/{name}"), data));
    }

    let mut ch = ssh.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let mut replies = Replies::default();
    let send = |r: Request<'_>| {
        let mut out = BytesMut::new();
        put_request(&mut out, &r);
        out.to_vec()
    };
    ch.data(&send(Request::Init { version: 3 })[..])
        .await
        .unwrap();
    assert_eq!(replies.next(&mut ch).await.0, 2, "VERSION");
    let mut handles = Vec::new();
    for (i, (path, _)) in files.iter().enumerate() {
        let open = Request::Open {
            id: i as u32,
            path,
            pflags: 1,
            attrs: Attrs::default(),
        };
        ch.data(&send(open)[..]).await.unwrap();
        let (kind, id, body) = replies.next(&mut ch).await;
        assert_eq!((kind, id), (102, i as u32), "HANDLE");
        handles.push(body[4..].to_vec());
    }

    // Everything in one write: 2 reads per file in small blocks, a stat, and
    // a READ whose fields end early (id 77). Twice: first with the files'
    // pages dropped from the page cache, so the reads go to storage on
    // blocking threads and finish in any order, then with them cached, so
    // they are answered at once.
    for cached in [false, true] {
        if !cached {
            for (path, _) in &files {
                drop_from_page_cache(&env.root().join(&path[1..]));
            }
        }
        let mut batch = Vec::new();
        let mut want = std::collections::BTreeMap::new();
        for (f, handle) in handles.iter().enumerate() {
            for block in 0..2u64 {
                let id = 10 + f as u32 * 2 + block as u32;
                batch.extend(send(Request::Read {
                    id,
                    handle,
                    offset: block * 64,
                    len: 64,
                }));
                let data = &files[f].1;
                let start = (block as usize * 64).min(data.len());
                want.insert(id, data[start..(start + 64).min(data.len())].to_vec());
            }
        }
        batch.extend(send(Request::Stat { id: 50, path: &dir }));
        batch.extend_from_slice(&[0, 0, 0, 9, 5, 0, 0, 0, 77, 0, 0, 0, 9]);
        ch.data(&batch[..]).await.unwrap();
        let mut got = std::collections::BTreeMap::new();
        let (mut stat, mut bad) = (false, false);
        while got.len() < want.len() || !stat || !bad {
            let (kind, id, body) = replies.next(&mut ch).await;
            match (kind, id) {
                (103, _) => {
                    let len = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
                    assert_eq!(body.len(), 4 + len);
                    assert!(
                        got.insert(id, body[4..].to_vec()).is_none(),
                        "id {id} twice"
                    );
                }
                (105, 50) => stat = true,
                (101, 77) => {
                    assert_eq!(body[..4], 5u32.to_be_bytes(), "BAD_MESSAGE");
                    bad = true;
                }
                other => panic!("unexpected reply {other:?} (cached: {cached})"),
            }
        }
        assert_eq!(got, want, "cached: {cached}");
    }

    // The session goes on: the handles close, a listing works.
    for (i, handle) in handles.iter().enumerate() {
        let id = 60 + i as u32;
        ch.data(&send(Request::Close { id, handle })[..])
            .await
            .unwrap();
        let (kind, rid, body) = replies.next(&mut ch).await;
        assert_eq!((kind, rid, &body[..4]), (101, id, &0u32.to_be_bytes()[..]));
    }
}

/// Asks the kernel to drop a file's pages from the page cache, so the next
/// read goes to storage.
fn drop_from_page_cache(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: a valid descriptor; advice only.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise on {}", path.display());
}

/// Reply packets read off a raw SFTP channel.
#[derive(Default)]
struct Replies {
    buf: Vec<u8>,
}

impl Replies {
    /// The next reply: its type, its id (0 for VERSION) and what follows the id.
    async fn next(&mut self, ch: &mut russh::Channel<russh::client::Msg>) -> (u8, u32, Vec<u8>) {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if self.buf.len() >= 4 + len {
                    let packet: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                    let id = u32::from_be_bytes(packet[1..5].try_into().unwrap());
                    return (packet[0], id, packet[5..].to_vec());
                }
            }
            let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ch.wait())
                .await
                .expect("a reply within 10 s");
            match msg {
                Some(russh::ChannelMsg::Data { data }) => self.buf.extend_from_slice(&data),
                Some(_) => {}
                None => panic!("the channel ended"),
            }
        }
    }
}
