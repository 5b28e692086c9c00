#!/usr/bin/env python3
"""udstil against OpenSSH's internal-sftp, side by side on the same files.

Starts udstil (this repo's binary) and a private OpenSSH sshd on two loopback
ports, both serving one generated tree read-only, and drives both with the
OpenSSH `sftp` client in batch mode, udstil first in odd rounds and OpenSSH
first in even ones (the page cache and the machine's state favour neither).
Every download is checked against the sha256 of the generated file, so a fast
wrong answer cannot win.

Run as root (sshd's chroot and its user need it); needs /usr/sbin/sshd
(Debian package openssh-server) and sftp (openssh-client). It never touches
the system's sshd, its config or port 22: sshd runs from its own config under
the work folder, as user `udstilbench` (created if missing).

    python3 bench/sftp_vs_openssh.py            # full run, writes BENCHMARKS.md
    python3 bench/sftp_vs_openssh.py --smoke    # tiny files, 2 rounds (CI)
    python3 bench/sftp_vs_openssh.py --shared /mnt/udstil-shared --shared-name GlusterFS
                                                # also transfers from a tree on shared storage

The single-stream downloads are also run through a relay that holds every
byte 10 ms in each direction (20 ms round trip, no bandwidth limit: a long
link, as from a supplier's data centre), written here since the kernel may
have no netem; both servers go through the same relay.

Only the Python standard library is used.
"""

import argparse
import collections
import hashlib
import json
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_USER = "udstilbench"
SUPPLIER = "bench"
# The authority, area and load the files are published under; the same
# virtual path in udstil's view and in sshd's chroot.
LOAD_DIR = "kommune/101/joblog/v1/full"
CIPHERS = [
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
]
# The same key exchange and host key type on both sides.
KEX = "curve25519-sha256"
HOST_KEY_ALG = "ssh-ed25519"
TICKS = os.sysconf("SC_CLK_TCK")
# Held in each direction by the relay: 20 ms round trip.
RELAY_DELAY = 0.010
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites this file -->"
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
GIB = 1 << 30


class Sizes:
    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.single = 8 * MIB if smoke else GIB
        self.clients = 32
        self.each = 1 * MIB if smoke else 128 * MIB
        self.sessions = 20 if smoke else 200
        self.idle = 20 if smoke else 1000
        self.rounds = 2 if smoke else 3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(64)  # the SSH banner: the server is up, not just the socket
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} within 30 s")


# ------------------------------------------------------------------ the tree


def make_file(path: Path, size: int) -> str:
    """Random content (so compression cannot help either side); returns sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    path.chmod(0o644)
    return h.hexdigest()


def make_tree(work: Path, sizes: Sizes) -> tuple[str, dict]:
    """The tree both servers serve: one published load holding the bench files.
    Every component is root-owned and closed to others (sshd's chroot rule)."""
    tree = work / "tree"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    wanted = {"single.bin": sizes.single}
    wanted.update({f"c{i:02}.bin": sizes.each for i in range(sizes.clients)})
    manifest_path = work / "files.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    # Reuse files of the right size from an earlier run (1 GiB + 4 GiB take a while).
    if tree.exists():
        loads = sorted((tree / LOAD_DIR).iterdir()) if (tree / LOAD_DIR).exists() else []
        if len(loads) == 1 and old.get("sizes") == {k: v for k, v in wanted.items()}:
            load = loads[0]
            # A fresh stamp, so the load is newer than the last schedule tick.
            new = load.with_name(f"000001_{stamp}")
            load.rename(new)
            log(f"reusing the generated files in {new}")
            return f"/{LOAD_DIR}/{new.name}", old["sha256"]
        shutil.rmtree(tree)
    load = tree / LOAD_DIR / f"000001_{stamp}"
    load.mkdir(parents=True)
    for p in [tree, *load.relative_to(tree).parents, load.relative_to(tree)]:
        q = tree / p
        os.chown(q, 0, 0)
        q.chmod(0o755)
    log(f"generating {sum(wanted.values()) / MIB:.0f} MiB of random files in {load}")
    sums = {name: make_file(load / name, size) for name, size in wanted.items()}
    manifest_path.write_text(json.dumps({"sizes": wanted, "sha256": sums}))
    return f"/{LOAD_DIR}/{load.name}", sums


# ------------------------------------------------------------------ servers


def ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(BENCH_USER)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--home-dir", "/",
             "--shell", "/usr/sbin/nologin", BENCH_USER])
        # '*' rather than useradd's '!': without PAM, sshd refuses a locked account.
        run(["usermod", "-p", "*", BENCH_USER])
        return pwd.getpwnam(BENCH_USER)


def client_key(work: Path) -> Path:
    d = work / "client"
    d.mkdir(mode=0o700, exist_ok=True)
    key = d / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "udstil-bench", "-f", str(key)])
    return key


def start_udstil(work: Path, binary: Path, key: Path, sizes: Sizes, group,
                 tree: Path, name: str = "udstil") -> tuple[subprocess.Popen, int]:
    d = work / name
    d.mkdir(exist_ok=True)
    port = free_port()
    source = d / "dfdg.sqlite"
    if not source.exists():
        run([str(binary), "fixtures", "generate", "--source", f"sqlite://{source}", "--citizens", "10"],
            stdout=subprocess.DEVNULL)
    shutil.copy(key.with_suffix(".pub"), d / "bench.pub")
    caps = sizes.idle + 100
    (d / "udstil.toml").write_text(f"""# Written by bench/sftp_vs_openssh.py.
[sftp]
listen = "127.0.0.1:{port}"
host_key = "host_key"
max_sessions_per_supplier = {caps}
max_unauthenticated = {caps}
ban_after_failures = 1000

[storage]
root = "{tree}"

[source]
url = "sqlite://dfdg.sqlite"

[state]
url = "sqlite://state.sqlite"

[[supplier]]
id = "{SUPPLIER}"
name = "Benchmark client"
key_files = ["bench.pub"]

[[agreements.connection]]
id = "bench-101"
authority = "kommune/101"
suppliers = ["{SUPPLIER}"]
valid_from = "2025-01-01"

[[agreements.data_processing]]
id = "bench-dpa-101"
supplier = "{SUPPLIER}"
authority = "kommune/101"
valid_from = "2025-01-01"

[[agreements.cooperation]]
id = "bench-coop"
supplier = "{SUPPLIER}"
areas = ["joblog"]
valid_from = "2025-01-01"

# Scheduled once a year, so no load runs during the benchmark.
[[area]]
id = "joblog"
version = 1
table = "joblog"
journal = "joblog_journal"
key = ["joblog_id"]
sequence_column = "seq"
operation_column = "op"
changed_at_column = "changed_at"
route = {{ kommune = "kommune_kode", akasse = "akasse_kode" }}
draft_column = "kladde"
exclude_columns = ["skat_indkomst"]
schedule = {{ delta = "0 0 0 1 1 *" }}
retention = {{ full_loads = 3 }}
""")
    logf = open(d / "udstil.log", "w")
    proc = subprocess.Popen([str(binary), "serve", "--config", str(d / "udstil.toml")],
                            stdout=logf, stderr=subprocess.STDOUT,
                            env={**os.environ, "RUST_LOG": "warn"},
                            preexec_fn=group.enter if group else None)
    wait_port(port, proc, "udstil")
    return proc, port


def start_sshd(work: Path, key: Path, sizes: Sizes, group,
               tree: Path, name: str = "sshd") -> tuple[subprocess.Popen, int]:
    ensure_user()
    d = work / name
    d.mkdir(mode=0o755, exist_ok=True)
    host = d / "host_ed25519"
    if not host.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host)])
    auth = d / "authorized_keys"
    shutil.copy(key.with_suffix(".pub"), auth)
    auth.chmod(0o644)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    port = free_port()
    conf = d / "sshd_config"
    conf.write_text(f"""# Written by bench/sftp_vs_openssh.py; not the system's sshd.
Port {port}
ListenAddress 127.0.0.1
HostKey {host}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {auth}
StrictModes yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers {BENCH_USER}
AllowTcpForwarding no
X11Forwarding no
PermitTTY no
# The default 10:30:100 drops most of a burst of connections.
MaxStartups {sizes.idle + 100}
LoginGraceTime 120
Subsystem sftp internal-sftp -R
ChrootDirectory {tree}
ForceCommand internal-sftp -R
""")
    run(["/usr/sbin/sshd", "-t", "-f", str(conf)])
    logf = open(d / "sshd.log", "w")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                            stdout=logf, stderr=subprocess.STDOUT,
                            preexec_fn=group.enter if group else None)
    wait_port(port, proc, "sshd")
    return proc, port


class CpuGroup:
    """A control group for one server, so its CPU time counts every process it
    forks, also those that have exited: sshd's per-connection processes are
    not all reaped by the listener, so its /proc counters miss most of them.
    Uses cgroup v1 cpuacct, else cgroup v2; None where neither is writable."""

    def __init__(self, path: Path, usage):
        self.path, self.usage = path, usage

    @staticmethod
    def create(name: str):
        candidates = [(Path("/sys/fs/cgroup/cpuacct"), CpuGroup.v1_usage)] + [
            (root, CpuGroup.v2_usage)
            for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
            if (root / "cgroup.controllers").exists()
        ]
        for root, usage in candidates:
            d = root / f"udstil-bench-{name}"
            try:
                d.mkdir(exist_ok=True)
                usage(d)
                return CpuGroup(d, usage)
            except OSError:
                continue
        return None

    @staticmethod
    def v1_usage(d: Path) -> float:
        return int((d / "cpuacct.usage").read_text()) / 1e9

    @staticmethod
    def v2_usage(d: Path) -> float:
        for line in (d / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) / 1e6
        raise OSError("no usage_usec in cpu.stat")

    def enter(self) -> None:
        """Runs in the child between fork and exec."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float:
        return self.usage(self.path)

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


class Server:
    def __init__(self, name: str, proc: subprocess.Popen, port: int, user: str, group):
        self.name, self.proc, self.port, self.user, self.group = name, proc, port, user, group

    def pids(self) -> list[int]:
        """The server's process and every descendant (sshd forks per connection)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            # A per-connection process may exit between listing and reading.
            try:
                tasks = list(Path(f"/proc/{pid}/task").iterdir())
            except OSError:
                continue
            for task in tasks:
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        return out

    def cpu_seconds(self) -> float:
        """User + system time of the server and everything it forked."""
        if self.group:
            return self.group.seconds()
        # Without a control group: children the server has reaped only.
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # Fields 14-17 of stat: utime stime cutime cstime (f[0] is field 3).
        return sum(int(x) for x in f[11:15]) / TICKS

    def quiesce(self) -> None:
        """Waits until every per-connection process has exited and been reaped,
        so its CPU time is in the parent's counters."""
        for _ in range(200):
            if len(self.pids()) == 1:
                return
            time.sleep(0.05)

    def memory(self) -> tuple[int, int]:
        """Resident (RSS) and proportional (PSS) bytes, summed over processes."""
        rss = pss = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            except OSError:
                pass
        return rss, pss


class Relay:
    """A TCP relay to `port` that holds every byte `delay` seconds in each
    direction: a long link without a bandwidth limit. Each direction has a
    reader that timestamps what arrives and a writer that sends it when due,
    so the relay itself never holds the stream back."""

    def __init__(self, port: int, delay: float):
        self.target, self.delay = port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, server)
            self._pipe(server, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        due: collections.deque = collections.deque()
        ready = threading.Condition()

        def read() -> None:
            while True:
                try:
                    data = src.recv(4 * MIB)
                except OSError:
                    data = b""
                with ready:
                    due.append((time.monotonic() + self.delay, data))
                    ready.notify()
                if not data:
                    return

        def write() -> None:
            while True:
                with ready:
                    while not due:
                        ready.wait()
                    at, data = due.popleft()
                wait = at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self.listener.close()


# ------------------------------------------------------------------ the client


def sftp_cmd(server: Server, key: Path, cipher: str = CIPHERS[0]) -> list[str]:
    return [
        "sftp", "-q", "-P", str(server.port), "-i", str(key),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", f"KexAlgorithms={KEX}",
        "-o", f"HostKeyAlgorithms={HOST_KEY_ALG}", "-o", f"Ciphers={cipher}",
        f"{server.user}@127.0.0.1",
    ]


def sftp_batch(cmd: list[str], commands: str, work: Path) -> subprocess.Popen:
    """Starts `sftp -b FILE` with `commands` in FILE; the client runs them at once."""
    fd, path = tempfile.mkstemp(dir=work, prefix="batch-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(commands)
    p = subprocess.Popen(cmd[:-1] + ["-b", path, cmd[-1]], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    p.batch_file = path
    return p


def finish(p: subprocess.Popen, what: str) -> None:
    _, err = p.communicate()
    os.unlink(p.batch_file)
    if p.returncode != 0:
        raise SystemExit(f"sftp failed ({what}, exit {p.returncode}): {err.strip()}")


def verify(path: Path, want: str) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    if h.hexdigest() != want:
        raise SystemExit(f"{path.name}: sha256 {h.hexdigest()} is not the served file's {want}")
    path.unlink()


def download(server: Server, key: Path, cipher: str, remote: str, names: list[str],
             sums: dict, into: Path) -> tuple[float, float, int]:
    """Downloads `names`, one client each, all at once; returns wall seconds,
    server CPU seconds and bytes, after checking every file's sha256."""
    server.quiesce()
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    procs = [(n, sftp_batch(sftp_cmd(server, key, cipher),
                            f"get {remote}/{n} {into / (server.name + '-' + n)}\n", into))
             for n in names]
    for n, p in procs:
        finish(p, f"get {n} from {server.name}")
    wall = time.perf_counter() - t0
    server.quiesce()
    cpu = server.cpu_seconds() - cpu0
    total = 0
    for n in names:
        path = into / (server.name + "-" + n)
        total += path.stat().st_size
        verify(path, sums[n])
    return wall, cpu, total


def login_latencies(server: Server, key: Path, remote: str, n: int, into: Path) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        finish(sftp_batch(sftp_cmd(server, key), f"ls {remote}\n", into), f"ls on {server.name}")
        out.append(time.perf_counter() - t0)
    return out


def idle_sessions(server: Server, key: Path, n: int) -> tuple[int, int, int]:
    """Opens `n` authenticated sessions that stay idle; returns the server's
    RSS and PSS with them open, and its RSS before."""
    server.quiesce()
    before, _ = server.memory()
    procs = []
    try:
        for start in range(0, n, 50):
            wave = []
            for _ in range(min(50, n - start)):
                p = subprocess.Popen(sftp_cmd(server, key)[:-1] + ["-b", "-", f"{server.user}@127.0.0.1"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
                p.stdin.write("pwd\n")
                p.stdin.flush()
                wave.append(p)
            # `pwd` answered: the session is authenticated and its SFTP channel open.
            for p in wave:
                line = p.stdout.readline()
                while line and "Remote working directory" not in line:
                    line = p.stdout.readline()
                if not line:
                    raise SystemExit(f"an idle session to {server.name} ended early (exit {p.wait()})")
            procs += wave
        time.sleep(2)
        rss, pss = server.memory()
        return rss, pss, before
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait()


# ------------------------------------------------------------------ the run


def median(xs):
    return statistics.median(xs)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def machine(binary: Path) -> list[str]:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU")
    mem = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
               if l.startswith("MemTotal"))
    osname = next((l.split("=", 1)[1].strip('"') for l in Path("/etc/os-release").read_text().splitlines()
                   if l.startswith("PRETTY_NAME=")), "Linux")
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    # Only changes that reach the binary count.
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no",
                            "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores (client and both servers share them)",
        f"- Memory: {mem / (1 << 20):.1f} GiB; {osname}; kernel {platform.release()}",
        f"- OpenSSH: {ssh} (server and client)",
        f"- udstil: commit {commit}{' (with uncommitted source changes)' if dirty else ''}, "
        f"{'release build' if 'release' in binary.parts else binary}",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny files, 2 rounds; for CI")
    ap.add_argument("--udstil", default=str(REPO / "target/release/udstil"), help="udstil binary")
    ap.add_argument("--work", default="/var/lib/udstil-bench",
                    help="work folder; its path must be root-owned and closed to others (sshd's chroot)")
    ap.add_argument("--out", help="write the report here (default: BENCHMARKS.md for a full run)")
    ap.add_argument("--shared", help="a folder on shared storage (a mounted shared file system): "
                    "the transfers are also measured with both servers serving a tree there")
    ap.add_argument("--shared-name", default="shared storage", help="what the report calls the shared storage")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: sshd needs it for its chroot and its user")
    for tool in ["/usr/sbin/sshd", shutil.which("sftp"), shutil.which("ssh-keygen")]:
        if not tool or not os.access(tool, os.X_OK):
            raise SystemExit("needs sshd, sftp and ssh-keygen: apt-get install openssh-server openssh-client")
    binary = Path(args.udstil).resolve()
    if not binary.exists():
        raise SystemExit(f"{binary} not found: cargo build --release")
    sizes = Sizes(args.smoke)
    out = Path(args.out) if args.out else (None if args.smoke else REPO / "BENCHMARKS.md")

    # Sockets and pipes for 1,000 sessions on each side.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    work = Path(args.work)
    work.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(work, 0, 0)
    work.chmod(0o755)
    remote, sums = make_tree(work, sizes)
    key = client_key(work)
    downloads = Path("/dev/shm") / "udstil-bench"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir()

    names = ("udstil", "openssh") + (("udstil-shared", "openssh-shared") if args.shared else ())
    groups = {name: CpuGroup.create(name) for name in names}
    if not all(groups.values()):
        log("warning: no writable cgroup; OpenSSH's CPU misses per-connection processes it did not reap")
    up, up_port = start_udstil(work, binary, key, sizes, groups["udstil"], work / "tree")
    ssh, ssh_port = start_sshd(work, key, sizes, groups["openssh"], work / "tree")
    servers = [Server("udstil", up, up_port, SUPPLIER, groups["udstil"]),
               Server("openssh", ssh, ssh_port, BENCH_USER, groups["openssh"])]
    # The same servers' twins serving a tree on the shared storage (their
    # own folders stay local: only the tree is shared).
    shared_servers, shared_remote, shared_sums = [], "", {}
    if args.shared:
        shared = Path(args.shared)
        shared.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(shared, 0, 0)
        shared.chmod(0o755)
        shared_remote, shared_sums = make_tree(shared, sizes)
        sup, sup_port = start_udstil(work, binary, key, sizes, groups["udstil-shared"],
                                     shared / "tree", "udstil-shared")
        ssh2, ssh2_port = start_sshd(work, key, sizes, groups["openssh-shared"],
                                     shared / "tree", "sshd-shared")
        shared_servers = [Server("udstil", sup, sup_port, SUPPLIER, groups["udstil-shared"]),
                          Server("openssh", ssh2, ssh2_port, BENCH_USER, groups["openssh-shared"])]
    on_shared = f"tree on {args.shared_name}"
    # The same servers reached through the relay (20 ms round trip).
    relays = [Relay(s.port, RELAY_DELAY) for s in servers]
    relayed = [Server(s.name, s.proc, r.port, s.user, s.group) for s, r in zip(servers, relays)]
    far = f"{2 * RELAY_DELAY * 1000:.0f} ms round trip"
    results: dict = {}

    def add(metric: str, server: str, value: float) -> None:
        results.setdefault(metric, {}).setdefault(server, []).append(value)

    def turns(on: list) -> list:
        """The servers in this round's order."""
        return on if rnd % 2 else on[::-1]

    def single(on: list, remote: str, sums: dict, cipher: str, label: str) -> None:
        """One download of the big file from each server in `on`."""
        for s in turns(on):
            wall, cpu, total = download(s, key, cipher, remote, ["single.bin"], sums, downloads)
            add(f"single-stream MiB/s, {label}", s.name, total / MIB / wall)
            add(f"server CPU s/GiB, single stream, {label}", s.name, cpu / (total / GIB))
            log(f"  {s.name:8} single {label}: {total / MIB / wall:8.1f} MiB/s, "
                f"{cpu / (total / GIB):.2f} CPU s/GiB")

    try:
        for rnd in range(1, sizes.rounds + 1):
            log(f"round {rnd} of {sizes.rounds}")
            for cipher in CIPHERS:
                short = cipher.split("@")[0]
                single(servers, remote, sums, cipher, short)
                single(relayed, remote, sums, cipher, f"{short}, {far}")
                single(shared_servers, shared_remote, shared_sums, cipher, f"{short}, {on_shared}")
            names = [f"c{i:02}.bin" for i in range(sizes.clients)]
            for s in turns(servers):
                wall, cpu, total = download(s, key, CIPHERS[0], remote, names, sums, downloads)
                add(f"{sizes.clients} clients, aggregate MiB/s", s.name, total / MIB / wall)
                add(f"server CPU s/GiB, {sizes.clients} clients", s.name, cpu / (total / GIB))
                log(f"  {s.name:8} {sizes.clients} clients: {total / MIB / wall:8.1f} MiB/s")
            for s in turns(shared_servers):
                wall, cpu, total = download(s, key, CIPHERS[0], shared_remote, names, shared_sums, downloads)
                add(f"{sizes.clients} clients, aggregate MiB/s, {on_shared}", s.name, total / MIB / wall)
                add(f"server CPU s/GiB, {sizes.clients} clients, {on_shared}", s.name, cpu / (total / GIB))
                log(f"  {s.name:8} {sizes.clients} clients, {on_shared}: {total / MIB / wall:8.1f} MiB/s")
            for s in turns(servers):
                lat = login_latencies(s, key, remote, sizes.sessions, downloads)
                add("login + ls + exit p50 ms", s.name, pct(lat, 0.5) * 1000)
                add("login + ls + exit p95 ms", s.name, pct(lat, 0.95) * 1000)
                log(f"  {s.name:8} login p50 {pct(lat, 0.5) * 1000:.1f} ms, p95 {pct(lat, 0.95) * 1000:.1f} ms")
            for s in turns(servers):
                rss, pss, before = idle_sessions(s, key, sizes.idle)
                add(f"memory with {sizes.idle} idle sessions, RSS MiB", s.name, rss / MIB)
                add(f"memory with {sizes.idle} idle sessions, PSS MiB", s.name, pss / MIB)
                log(f"  {s.name:8} {sizes.idle} idle: RSS {rss / MIB:.1f} MiB (before {before / MIB:.1f}), "
                    f"PSS {pss / MIB:.1f} MiB")
    finally:
        for r in relays:
            r.close()
        for s in servers + shared_servers:
            s.proc.send_signal(signal.SIGTERM)
        for s in servers + shared_servers:
            try:
                s.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
        for g in groups.values():
            if g:
                g.remove()
        shutil.rmtree(downloads, ignore_errors=True)

    rows = []
    for metric, by in results.items():
        a, b = median(by["udstil"]), median(by["openssh"])
        rows.append((metric, a, b, a / b if b else float("nan"),
                     "higher" if "MiB/s" in metric else "lower"))
    title = "smoke run (tiny files; figures mean nothing)" if sizes.smoke else "full run"
    lines = [
        "# Benchmarks: udstil against OpenSSH internal-sftp",
        "",
        f"The figures of the last {title}: medians over {sizes.rounds} rounds, each round "
        "running both servers on the same files with the same client (OpenSSH `sftp` "
        f"in batch mode, key exchange {KEX}, ed25519 keys), udstil first in odd rounds and "
        "OpenSSH first in even ones. Every download's sha256 was "
        "checked against the generated file.",
        "",
        "Reproduce (as root, with Debian's `openssh-server` and `openssh-client` installed; the system's sshd need not run; about 20 minutes):",
        "",
        "    cargo build --release",
        "    python3 bench/sftp_vs_openssh.py"
        + (f" --shared {args.shared} --shared-name {args.shared_name}" if args.shared else ""),
        "",
        f"The rows marked \"{far}\" reach both servers through a relay in the benchmark that "
        f"holds every byte {RELAY_DELAY * 1000:.0f} ms in each direction, with no bandwidth limit.",
        "",
        *([f"The rows marked \"{on_shared}\" have both servers serving a second copy of the files "
           f"from {args.shared}, a mount of {args.shared_name} (see the notes below for how it was set "
           "up); their own folders stay on local disk.", ""] if args.shared else []),
        "Machine:",
        "",
        *machine(binary),
        "",
        f"Files: one of {sizes.single / MIB:.0f} MiB (single stream), {sizes.clients} of "
        f"{sizes.each / MIB:.0f} MiB (one per concurrent client); {sizes.sessions} sequential "
        f"sessions for the latency; {sizes.idle} idle sessions for memory. OpenSSH's memory "
        "and CPU are summed over all its processes; RSS sums count shared pages once per "
        "process, PSS shares them out.",
        "",
        "| measure | udstil | OpenSSH | udstil / OpenSSH | better |",
        "|---|---:|---:|---:|---|",
        *[f"| {m} | {a:,.2f} | {b:,.2f} | {r:.2f} | {d} |" for m, a, b, r, d in rows],
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if out:
        # Hand-written notes below the marker survive a rerun.
        old = out.read_text() if out.exists() else ""
        if NOTES_MARKER in old:
            report += "\n" + old[old.index(NOTES_MARKER):]
        out.write_text(report)
        log(f"written to {out}")


if __name__ == "__main__":
    main()
