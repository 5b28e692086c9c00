//! Coverage-guided fuzzing of `tree::resolve`, the one function that turns a
//! client path into a location. The properties are those of the proptest in
//! `src/tree/mod.rs`: a resolved path round-trips through its canonical form,
//! its real path stays under the root with no hidden (`.`) names, and a
//! location visible to a supplier who may read only kommune/101's joblog is
//! one of those.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use udstil::authority::{AuthorityId, AuthorityKind};
use udstil::tree::{Location, resolve};

fuzz_target!(|data: &[u8]| {
    // SFTP paths arrive as bytes; the server decodes them as UTF-8 text.
    let path = String::from_utf8_lossy(data);
    let Ok(loc) = resolve(&path) else { return };
    assert_eq!(resolve(&loc.virtual_path()).as_ref(), Ok(&loc), "{path:?}");
    let root = Path::new("/srv/tree");
    if let Some(real) = loc.real_path(root) {
        let inside = real.strip_prefix(root).expect("real path under the root");
        for c in inside.components() {
            let Component::Normal(name) = c else {
                panic!("{path:?} -> {} leaves the tree", real.display());
            };
            assert!(!name.to_string_lossy().starts_with('.'), "{path:?} reaches a hidden name");
        }
    }
    let joblog_101: AuthorityId = "kommune/101".parse().unwrap();
    let visible = BTreeMap::from([(joblog_101, BTreeSet::from(["joblog".to_string()]))]);
    if loc.is_visible(&visible) {
        match &loc {
            Location::Root => {}
            Location::Kind(k) => assert_eq!(*k, AuthorityKind::Kommune),
            Location::Authority(a) => assert_eq!(*a, joblog_101),
            Location::Area { authority, area, .. } => {
                assert_eq!(*authority, joblog_101);
                assert_eq!(area, "joblog");
            }
        }
    }
});
