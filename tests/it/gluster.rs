//! A GlusterFS volume for tests that keep the tree on a shared file system:
//! Debian's glusterd on this machine, one brick, and the volume mounted
//! through FUSE once per replica, so each replica reads and writes through a
//! client of its own, as on separate machines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Volume {
    name: String,
    pub mounts: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

/// This machine's first non-loopback IPv4 address: glusterd refuses a
/// loopback brick address.
fn host_address() -> String {
    let out = Command::new("hostname").arg("-I").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.contains('.') && !a.starts_with("127."))
        .expect("an IPv4 address other than loopback for the GlusterFS brick")
        .to_string()
}

fn gluster(args: &[&str]) -> std::process::Output {
    Command::new("gluster")
        .arg("--mode=script")
        .args(args)
        .output()
        .expect("gluster (Debian's glusterfs-server; .ci/run installs it)")
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Volume {
    /// A new volume `name` (made unique to this process), mounted `mounts` times.
    pub fn create(name: &str, mounts: usize) -> Volume {
        let running = Command::new("gluster")
            .args(["--mode=script", "volume", "list"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !running {
            // glusterd forks into the background; it stays for later tests.
            let started = Command::new("glusterd")
                .args(["--log-file=/var/log/glusterfs/udstil-tests.log"])
                .status()
                .expect("glusterd (Debian's glusterfs-server; .ci/run installs it)");
            assert!(started.success(), "glusterd did not start");
            let up = Instant::now();
            while !gluster(&["volume", "list"]).status.success() {
                assert!(
                    up.elapsed() < Duration::from_secs(20),
                    "glusterd never answered"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{name}{}", std::process::id());
        let brick = dir.path().join("brick");
        std::fs::create_dir(&brick).unwrap();
        let host = host_address();
        let at = format!("{host}:{}", brick.display());
        // `force`: the brick is on the root file system, which a production
        // volume would refuse.
        ok(
            &gluster(&["volume", "create", &name, &at, "force"]),
            "volume create",
        );
        ok(&gluster(&["volume", "start", &name]), "volume start");
        let mut volume = Volume {
            name: name.clone(),
            mounts: Vec::new(),
            _dir: dir,
        };
        for i in 0..mounts {
            let at = volume._dir.path().join(format!("mount{i}"));
            std::fs::create_dir(&at).unwrap();
            let out = Command::new("mount")
                .args(["-t", "glusterfs", &format!("{host}:/{name}")])
                .arg(&at)
                .output()
                .unwrap();
            ok(&out, "mount -t glusterfs");
            volume.mounts.push(at);
        }
        assert!(is_glusterfs(&volume.mounts[0]), "not a GlusterFS mount");
        volume
    }
}

/// Whether `path` is on a GlusterFS (FUSE) mount.
pub fn is_glusterfs(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, at, kind) = (f.next(), f.next(), f.next());
        at == Some(&*path.to_string_lossy()) && kind == Some("fuse.glusterfs")
    })
}

impl Drop for Volume {
    fn drop(&mut self) {
        for m in &self.mounts {
            // Lazy: a killed replica's files may still be open for a moment.
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = gluster(&["volume", "stop", &self.name, "force"]);
        let _ = gluster(&["volume", "delete", &self.name]);
    }
}
