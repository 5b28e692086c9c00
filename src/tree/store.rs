//! The file-system half of the tree: the only code that reads, lists or
//! changes the published tree on disk, and the only place a location becomes
//! a real path. Loads are built in a staging folder (`<root>/.staging`,
//! hidden from clients by its name), enter the tree by rename, and leave it
//! by a rename to a hidden name before they are deleted, so a reader never
//! sees half a load. Everything else (`load`, `state`, `audit::index`,
//! `sftp`) goes through [`Store`]; a second storage backend would implement
//! this interface.

use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use super::{LoadId, LoadKind, Location};
use crate::authority::{AuthorityId, AuthorityKind};

const KINDS: [LoadKind; 2] = [LoadKind::Full, LoadKind::Delta];
const STAGING: &str = ".staging";

/// The published tree under one root folder.
#[derive(Debug, Clone)]
pub struct Store {
    /// Shared, as each SFTP request clones the store onto a blocking thread.
    root: std::sync::Arc<Path>,
}

/// One authority's folder of a published load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    pub authority: AuthorityId,
    pub area: String,
    pub version: u32,
    pub kind: LoadKind,
    pub id: LoadId,
}

impl std::fmt::Display for Load {
    /// The load's path in a supplier's view, for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "/{}/{}/v{}/{}/{}",
            self.authority,
            self.area,
            self.version,
            self.kind.as_str(),
            self.id
        )
    }
}

/// A load being built, in its own staging folder; per authority, the same
/// layout as the tree (see [`staged_authority_dir`]).
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    pub id: LoadId,
}

/// An area's load lock: held for a whole load, released when dropped or
/// when the process dies (an `flock` on `.staging/<area>.lock`).
#[derive(Debug)]
pub struct AreaLock {
    _file: File,
}

/// Where an authority's files go inside a staging folder. The load writer
/// writes there; nothing in staging is part of the view.
pub fn staged_authority_dir(staging: &Path, authority: AuthorityId) -> PathBuf {
    super::authority_dir(staging, authority)
}

impl Staged {
    /// The staging folder, for the load writer.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Authorities with a folder in this staging folder.
    pub fn authorities(&self) -> io::Result<Vec<AuthorityId>> {
        authorities_in(&self.dir)
    }

    pub fn read(&self, authority: AuthorityId, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(staged_authority_dir(&self.dir, authority).join(name))
    }

    /// Writes one of an authority's files (creating its folder).
    pub fn write(&self, authority: AuthorityId, name: &str, data: &[u8]) -> io::Result<()> {
        let dir = staged_authority_dir(&self.dir, authority);
        std::fs::create_dir_all(&dir).map_err(named(&dir))?;
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(named(&path))
    }
}

impl Store {
    /// The tree under `root`, as it is (no file-system access).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into().into(),
        }
    }

    /// The tree under `root`, created if missing, with the root's symlinks
    /// resolved: the form the supplier view needs, as it refuses any path
    /// that goes through a symlink.
    pub fn prepare(root: &Path) -> io::Result<Store> {
        std::fs::create_dir_all(root)?;
        Ok(Store::new(std::fs::canonicalize(root)?))
    }

    /// The root folder, for messages.
    pub fn root(&self) -> &Path {
        &self.root
    }

    // ---- The published tree -------------------------------------------

    /// Authorities with a folder in the tree.
    pub fn authorities(&self) -> io::Result<Vec<AuthorityId>> {
        authorities_in(&self.root)
    }

    /// The versions an authority has of an area, ascending.
    pub fn versions(&self, authority: AuthorityId, area: &str) -> io::Result<Vec<u32>> {
        let mut out: Vec<u32> = names(&super::area_dir(&self.root, authority, area))?
            .iter()
            .filter_map(|v| v.strip_prefix('v')?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// An authority's loads of one version of an area, both kinds, in load order.
    pub fn loads_of(
        &self,
        authority: AuthorityId,
        area: &str,
        version: u32,
    ) -> io::Result<Vec<Load>> {
        let mut out = Vec::new();
        for kind in KINDS {
            let dir = super::kind_dir(&self.root, authority, area, version, kind);
            for name in names(&dir)? {
                if let Some(id) = LoadId::parse(&name) {
                    out.push(Load {
                        authority,
                        area: area.to_string(),
                        version,
                        kind,
                        id,
                    });
                }
            }
        }
        out.sort_by_key(|l| l.id);
        Ok(out)
    }

    /// Every published load of an area: all authorities, versions and kinds.
    pub fn loads(&self, area: &str) -> io::Result<Vec<Load>> {
        let mut out = Vec::new();
        for authority in self.authorities()? {
            for version in self.versions(authority, area)? {
                out.extend(self.loads_of(authority, area, version)?);
            }
        }
        Ok(out)
    }

    pub fn exists(&self, load: &Load) -> bool {
        self.load_dir(load).exists()
    }

    /// One file of a published load, whole (manifests and checksums).
    pub fn read(&self, load: &Load, name: &str) -> io::Result<Vec<u8>> {
        let path = self.load_dir(load).join(name);
        std::fs::read(&path).map_err(named(&path))
    }

    /// One file of a published load, to stream.
    pub fn open(&self, load: &Load, name: &str) -> io::Result<File> {
        let path = self.load_dir(load).join(name);
        File::open(&path).map_err(named(&path))
    }

    /// The file names of a published load, sorted.
    pub fn files(&self, load: &Load) -> io::Result<Vec<String>> {
        let mut out: Vec<String> = names(&self.load_dir(load))?
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.sort();
        Ok(out)
    }

    /// A file in an authority's area folder (`CHANGES.json`), if there is one.
    pub fn read_area_file(
        &self,
        authority: AuthorityId,
        area: &str,
        name: &str,
    ) -> io::Result<Option<Vec<u8>>> {
        read_if_there(&super::area_dir(&self.root, authority, area).join(name))
    }

    /// A file in an authority's version folder of an area (`DICTIONARY.md`), if there is one.
    pub fn read_version_file(
        &self,
        authority: AuthorityId,
        area: &str,
        version: u32,
        name: &str,
    ) -> io::Result<Option<Vec<u8>>> {
        let dir = super::area_dir(&self.root, authority, area).join(format!("v{version}"));
        read_if_there(&dir.join(name))
    }

    /// Replaces a file in an authority's version folder of an area
    /// atomically, as [`Store::write_area_file`] does.
    pub fn write_version_file(
        &self,
        authority: AuthorityId,
        area: &str,
        version: u32,
        name: &str,
        data: &[u8],
    ) -> io::Result<()> {
        let dir = super::area_dir(&self.root, authority, area).join(format!("v{version}"));
        replace_file(&dir, name, data)
    }

    /// Replaces a file in an authority's area folder atomically (written and
    /// synced under a hidden name, then renamed).
    pub fn write_area_file(
        &self,
        authority: AuthorityId,
        area: &str,
        name: &str,
        data: &[u8],
    ) -> io::Result<()> {
        replace_file(&super::area_dir(&self.root, authority, area), name, data)
    }

    // ---- The supplier's view ------------------------------------------

    /// Whether a synthetic level of the view has anything published under
    /// it: an authority's (or area's) folder exists once it has a load.
    pub fn holds(&self, loc: &Location) -> bool {
        match loc {
            Location::Root | Location::Kind(_) => true,
            // Made by the session, not kept in the tree.
            Location::Ledger | Location::Announcements | Location::Announcement(_) => false,
            Location::Authority(a) => super::authority_dir(&self.root, *a).is_dir(),
            Location::Area { .. } => self.checked(loc).is_ok(),
        }
    }

    /// The metadata of a location: for the synthetic levels above an area
    /// folder, the root's.
    pub fn stat(&self, loc: &Location) -> io::Result<Metadata> {
        match loc {
            Location::Area { .. } => std::fs::symlink_metadata(self.checked(loc)?),
            _ => std::fs::metadata(&self.root),
        }
    }

    /// The entries of a folder at or below an area folder, sorted by name;
    /// hidden names (staging, temporary files) and symlinks are not part of
    /// the view.
    pub fn list(&self, loc: &Location) -> io::Result<Vec<(String, Metadata)>> {
        let dir = self.checked(loc)?;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if name.starts_with('.') || meta.file_type().is_symlink() {
                continue;
            }
            out.push((name, meta));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Opens a regular file of the view for reading.
    pub fn open_file(&self, loc: &Location) -> io::Result<(File, Metadata)> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.checked(loc)?)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::ErrorKind::IsADirectory.into());
        }
        Ok((f, meta))
    }

    /// The real path of an area location, refused (as not found) if a
    /// symlink anywhere in it would lead elsewhere.
    fn checked(&self, loc: &Location) -> io::Result<PathBuf> {
        let not_found = || io::Error::from(io::ErrorKind::NotFound);
        let real = loc.real_path(&self.root).ok_or_else(not_found)?;
        if std::fs::canonicalize(&real)? != real {
            tracing::warn!(path = %loc.virtual_path(), "refused a path that goes through a symlink");
            return Err(not_found());
        }
        Ok(real)
    }

    // ---- Changing the tree --------------------------------------------

    /// Takes the area's load lock, or `None` if another load holds it.
    pub fn lock(&self, area: &str) -> io::Result<Option<AreaLock>> {
        use std::os::fd::AsRawFd;
        let staging = self.root.join(STAGING);
        std::fs::create_dir_all(&staging).map_err(named(&staging))?;
        let path = staging.join(format!("{area}.lock"));
        let file = File::create(&path).map_err(named(&path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Ok(None);
        }
        Ok(Some(AreaLock { _file: file }))
    }

    /// A new, empty staging folder for a load of `area`.
    pub fn stage(&self, area: &str, id: LoadId) -> io::Result<Staged> {
        let dir = self.root.join(STAGING).join(format!("{area}-{id}"));
        std::fs::create_dir_all(&dir).map_err(named(&dir))?;
        Ok(Staged { dir, id })
    }

    /// Staging folders of `area` that an interrupted load left behind.
    pub fn staged(&self, area: &str) -> io::Result<Vec<Staged>> {
        let staging = self.root.join(STAGING);
        let prefix = format!("{area}-");
        Ok(names(&staging)?
            .into_iter()
            .filter_map(|name| {
                let id = name.strip_prefix(&prefix).and_then(LoadId::parse)?;
                Some(Staged {
                    dir: staging.join(name),
                    id,
                })
            })
            .collect())
    }

    /// Removes a staging folder and what is in it.
    pub fn discard(&self, staged: &Staged) -> io::Result<()> {
        match std::fs::remove_dir_all(&staged.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(named(&staged.dir)(e)),
            _ => Ok(()),
        }
    }

    /// Moves an authority's staged folder into the tree as `load`. Not
    /// durable until [`Store::sync`].
    pub fn publish(&self, staged: &Staged, load: &Load) -> io::Result<()> {
        let target = self.load_dir(load);
        let parent = target.parent().expect("a load folder has a parent");
        std::fs::create_dir_all(parent).map_err(named(parent))?;
        std::fs::rename(staged_authority_dir(&staged.dir, load.authority), &target)
            .map_err(named(&target))
    }

    /// Takes a load out of the tree: renamed to a hidden name first, so it
    /// leaves the view at once, then deleted. A client already reading one
    /// of its files keeps its open file and finishes. A version folder left
    /// without loads goes too.
    pub fn remove(&self, load: &Load) -> io::Result<()> {
        let dir = self.load_dir(load);
        let hidden = dir.with_file_name(format!(".removed-{}", load.id));
        std::fs::rename(&dir, &hidden).map_err(named(&dir))?;
        std::fs::remove_dir_all(&hidden).map_err(named(&hidden))?;
        if self
            .loads_of(load.authority, &load.area, load.version)?
            .is_empty()
        {
            let vdir = super::area_dir(&self.root, load.authority, &load.area)
                .join(format!("v{}", load.version));
            std::fs::remove_dir_all(&vdir).map_err(named(&vdir))?;
        }
        Ok(())
    }

    /// Takes an area out of the tree for every authority: each area folder
    /// is renamed to a hidden name (it leaves the view at once; open files
    /// finish), then deleted. Returns how many authorities held it.
    pub fn remove_area(&self, area: &str) -> io::Result<usize> {
        let mut removed = 0;
        for authority in self.authorities()? {
            let dir = super::area_dir(&self.root, authority, area);
            let hidden = dir.with_file_name(format!(".removed-{area}"));
            // What a crash left of an earlier removal goes first.
            if hidden.exists() {
                std::fs::remove_dir_all(&hidden).map_err(named(&hidden))?;
            }
            match std::fs::rename(&dir, &hidden) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(named(&dir)(e)),
            }
            std::fs::remove_dir_all(&hidden).map_err(named(&hidden))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Deletes the hidden `.removed-*` folders a crash inside [`Store::remove`]
    /// left behind in an area.
    pub fn remove_leftovers(&self, area: &str) -> io::Result<()> {
        for authority in self.authorities()? {
            for version in self.versions(authority, area)? {
                for kind in KINDS {
                    let dir = super::kind_dir(&self.root, authority, area, version, kind);
                    for name in names(&dir)? {
                        if name.starts_with(".removed-") {
                            let path = dir.join(name);
                            std::fs::remove_dir_all(&path).map_err(named(&path))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes everything written to the tree's file system durable: one sync
    /// of the whole file system replaces an fsync per file and folder,
    /// hundreds in a load. (It also waits for other writes to that file
    /// system, which on a volume given to the tree are few.) Linux reports
    /// writeback errors here from 5.8 on; older kernels do not.
    pub fn sync(&self) -> io::Result<()> {
        let f = File::open(&self.root).map_err(named(&self.root))?;
        rustix::fs::syncfs(f).map_err(|e| named(&self.root)(e.into()))
    }

    fn load_dir(&self, load: &Load) -> PathBuf {
        super::load_dir(
            &self.root,
            load.authority,
            &load.area,
            load.version,
            load.kind,
            load.id,
        )
    }
}

/// Authorities with a folder under `base` (the tree or a staging folder), sorted.
fn authorities_in(base: &Path) -> io::Result<Vec<AuthorityId>> {
    let mut out = Vec::new();
    for kind in AuthorityKind::ALL {
        for code in names(&base.join(kind.as_str()))? {
            if let Some(a) = AuthorityId::known(kind, &code) {
                out.push(a);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The names in a folder; none if it does not exist.
fn read_if_there(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `name` in `dir` under a hidden name, syncs it and renames it into
/// place, so a reader sees the old file or the new one, never a part.
fn replace_file(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(named(&tmp))?;
    f.write_all(data).map_err(named(&tmp))?;
    f.sync_all().map_err(named(&tmp))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(named(dir))
}

fn names(dir: &Path) -> io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()
            .map_err(named(dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(named(dir)(e)),
    }
}

/// An I/O error that names its path (std's do not).
fn named(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn load(a: &str, version: u32, kind: LoadKind, seq: u64) -> Load {
        Load {
            authority: a.parse().unwrap(),
            area: "joblog".into(),
            version,
            kind,
            id: LoadId {
                seq,
                at: chrono::Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).unwrap(),
            },
        }
    }

    fn stage_and_publish(store: &Store, l: &Load) {
        let staged = store.stage(&l.area, l.id).unwrap();
        staged.write(l.authority, "MANIFEST.json", b"{}").unwrap();
        store.publish(&staged, l).unwrap();
        store.discard(&staged).unwrap();
    }

    #[test]
    fn a_load_is_staged_published_listed_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::prepare(tmp.path()).unwrap();
        let full = load("kommune/101", 1, LoadKind::Full, 1);
        let delta = load("kommune/101", 1, LoadKind::Delta, 2);
        let other = load("akasse/901", 2, LoadKind::Full, 3);
        for l in [&full, &delta, &other] {
            stage_and_publish(&store, l);
        }
        store.sync().unwrap();
        let mut both = vec![other.authority, full.authority];
        both.sort();
        assert_eq!(store.authorities().unwrap(), both);
        assert_eq!(store.loads("joblog").unwrap().len(), 3);
        assert_eq!(
            store.loads_of(full.authority, "joblog", 1).unwrap(),
            vec![full.clone(), delta.clone()]
        );
        assert_eq!(store.read(&delta, "MANIFEST.json").unwrap(), b"{}");
        assert_eq!(store.files(&delta).unwrap(), vec!["MANIFEST.json"]);
        assert!(store.staged("joblog").unwrap().is_empty());

        // Removal leaves the view at once; the last load takes its version folder along.
        store.remove(&full).unwrap();
        assert!(!store.exists(&full) && store.exists(&delta));
        store.remove(&delta).unwrap();
        assert!(store.versions(full.authority, "joblog").unwrap().is_empty());
        let err = store.read(&delta, "MANIFEST.json").unwrap_err();
        assert!(err.to_string().contains("MANIFEST.json"), "{err}");
    }

    #[test]
    fn the_view_hides_staging_and_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::prepare(tmp.path()).unwrap();
        let l = load("kommune/101", 1, LoadKind::Full, 1);
        stage_and_publish(&store, &l);
        let _held = store.lock("joblog").unwrap().unwrap();
        assert!(
            store.lock("joblog").unwrap().is_none(),
            "the lock is exclusive"
        );
        let area = super::super::resolve("/kommune/101/joblog").unwrap();
        assert!(store.holds(&area));
        assert!(!store.holds(&super::super::resolve("/kommune/147").unwrap()));
        let names: Vec<String> = store
            .list(&area)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names, vec!["v1"]);

        let secret = tmp.path().join("secret.txt");
        std::fs::write(&secret, "x").unwrap();
        let full_dir = tmp.path().join("kommune/101/joblog/v1/full");
        std::os::unix::fs::symlink(&secret, full_dir.join("link.parquet")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("kommune/101/loop")).unwrap();
        let link = super::super::resolve("/kommune/101/joblog/v1/full/link.parquet").unwrap();
        assert_eq!(
            store.open_file(&link).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let through = super::super::resolve("/kommune/101/loop/kommune").unwrap();
        assert!(store.stat(&through).is_err());
        let listed: Vec<String> = store
            .list(&super::super::resolve("/kommune/101/joblog/v1/full").unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(listed, vec![l.id.to_string()], "symlinks are not listed");
    }

    #[test]
    fn an_interrupted_stage_is_found_again() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let l = load("kommune/101", 1, LoadKind::Full, 7);
        let staged = store.stage("joblog", l.id).unwrap();
        staged.write(l.authority, "MANIFEST.json", b"{}").unwrap();
        drop(staged);
        let found = store.staged("joblog").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, l.id);
        assert_eq!(found[0].authorities().unwrap(), vec![l.authority]);
        assert!(store.staged("plans").unwrap().is_empty());
        store.discard(&found[0]).unwrap();
        assert!(store.staged("joblog").unwrap().is_empty());
    }
}
