//! The demo: a data folder with test-only supplier keys, a config and a
//! synthetic DFDG, and the welcome text naming what each supplier sees.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::Utc;

use std::sync::Arc;

use super::{AppError, LoadRequest, Server, check_config, run_loads};
use crate::config::Config;
use crate::load::LoadReport;
use crate::source::Source;

/// A demo ready to serve: its full loads done, the server bound.
pub struct Demo {
    pub server: Server,
    pub loads: Vec<LoadReport>,
    /// What to tell the user: where the data is and how each supplier connects.
    pub welcome: String,
}

impl Demo {
    /// A line per area loaded.
    pub fn loaded(&self) -> String {
        self.loads
            .iter()
            .map(|r| {
                format!(
                    "loaded {:<30} {:>8} rows into {:>3} authorities ({})",
                    r.area, r.rows_read, r.authorities, r.load_id
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Lays out `dir` (see [`prepare_demo`]), runs a full load of every area,
/// binds the server and writes a `known_hosts` for the printed commands.
pub async fn demo(listen: SocketAddr, dir: &Path, citizens: u64) -> Result<Demo, AppError> {
    let io = |what: String| move |source| AppError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let dir = std::fs::canonicalize(dir).map_err(io(format!("finding {}", dir.display())))?;
    let config_path = prepare_demo(&dir, listen, citizens, 1).await?;
    let config = check_config(&config_path).await?;
    let loads = run_loads(&config, LoadRequest::full(None)).await?;
    let config = Arc::new(config);
    let server = Server::bind(config.clone(), listen).await?;
    let host = crate::sftp::host_key(&config.sftp.host_key)?;
    let line = format!(
        "[{}]:{} {}\n",
        server.addr.ip(),
        server.addr.port(),
        host.public_key().to_openssh().map_err(|e| AppError::Io {
            what: "host key".into(),
            source: std::io::Error::other(e.to_string()),
        })?
    );
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, line).map_err(io(format!("writing {}", known_hosts.display())))?;
    let welcome = format!(
        "\nudstil demo: SFTP on {} (data in {}; config {})\nConnect as each demo supplier:{}\nStop with Ctrl-C. `udstil serve --config {}` serves the same folder again.",
        server.addr,
        dir.display(),
        config_path.display(),
        describe_access(&config, &config_path, server.addr),
        config_path.display()
    );
    Ok(Demo {
        server,
        loads,
        welcome,
    })
}

/// Test keys and the demo config, compiled in so `udstil demo` runs from anywhere.
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
const DEMO_ANNOUNCEMENTS: &str = include_str!("../../config/announcements.toml");
const DEMO_KEYS: &[(&str, &str)] = &[
    ("bi-alpha", include_str!("../../fixtures/keys/bi-alpha")),
    (
        "bi-alpha.pub",
        include_str!("../../fixtures/keys/bi-alpha.pub"),
    ),
    ("bi-beta", include_str!("../../fixtures/keys/bi-beta")),
    (
        "bi-beta.pub",
        include_str!("../../fixtures/keys/bi-beta.pub"),
    ),
    ("bi-gamma", include_str!("../../fixtures/keys/bi-gamma")),
    (
        "bi-gamma.pub",
        include_str!("../../fixtures/keys/bi-gamma.pub"),
    ),
    ("bi-delta", include_str!("../../fixtures/keys/bi-delta")),
    (
        "bi-delta.pub",
        include_str!("../../fixtures/keys/bi-delta.pub"),
    ),
];

/// Lays out a demo data folder: keys (mode 0600), `udstil.toml` listening on
/// `listen` with its `announcements.toml`, and a synthetic DFDG if there is none yet. Returns the config path.
pub async fn prepare_demo(
    dir: &Path,
    listen: SocketAddr,
    citizens: u64,
    seed: u64,
) -> Result<PathBuf, AppError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| move |source| AppError::Io { what, source };
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).map_err(io(format!("creating {}", keys.display())))?;
    for (name, text) in DEMO_KEYS {
        let path = keys.join(name);
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        // OpenSSH refuses a private key others can read; git keeps no modes.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("chmod {}", path.display())))?;
    }
    let default_listen = "listen = \"127.0.0.1:2222\"";
    assert!(
        DEMO_CONFIG.contains(default_listen),
        "config/demo.toml sets the demo listen address"
    );
    let text = DEMO_CONFIG.replacen(default_listen, &format!("listen = \"{listen}\""), 1);
    let config_path = dir.join("udstil.toml");
    std::fs::write(&config_path, text).map_err(io(format!("writing {}", config_path.display())))?;
    let announcements = dir.join("announcements.toml");
    std::fs::write(&announcements, DEMO_ANNOUNCEMENTS)
        .map_err(io(format!("writing {}", announcements.display())))?;

    let db = dir.join("dfdg.sqlite");
    if !db.exists() {
        let source = Source::create(&format!("sqlite://{}", db.display())).await?;
        let summary = crate::fixtures::generate(&source, citizens, seed).await?;
        source.close().await;
        tracing::info!(citizens = summary.citizens, "generated a synthetic DFDG");
    }
    Ok(config_path)
}

/// What each supplier sees now, for the demo's welcome text.
pub fn describe_access(config: &Config, config_path: &Path, addr: SocketAddr) -> String {
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let mut out = String::new();
    let now = Utc::now();
    for s in config.suppliers.values() {
        let key = dir.join("keys").join(&s.id);
        out.push_str(&format!(
            "\n  {} ({})\n    sftp -P {} -i {} -o UserKnownHostsFile={} {}@{}\n",
            s.id,
            s.name,
            addr.port(),
            key.display(),
            dir.join("known_hosts").display(),
            s.id,
            addr.ip()
        ));
        let visible = config.agreements.visible(&s.id, now);
        if visible.is_empty() {
            out.push_str("    sees: nothing (logs in, empty tree)\n");
        }
        for (authority, areas) in visible {
            out.push_str(&format!(
                "    sees: /{authority} ({}): {}\n",
                authority.name().unwrap_or("?"),
                areas.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}
