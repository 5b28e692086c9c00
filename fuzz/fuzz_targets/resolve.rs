//! Coverage-guided fuzzing of `tree::resolve`, the one function that turns a
//! client path into a location. The properties are those of the proptest in
//! `src/tree/mod.rs` that hold through the public interface: a resolved
//! path round-trips through its canonical form, no component of a location
//! in the tree is a hidden (`.`) name, and a location visible to a supplier
//! who may read only kommune/101's joblog is one of those (or a file made
//! for the supplier itself).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use udstil::authority::{AuthorityId, AuthorityKind};
use udstil::tree::{Location, resolve};

fuzz_target!(|data: &[u8]| {
    // SFTP paths arrive as bytes; the server decodes them as UTF-8 text.
    let path = String::from_utf8_lossy(data);
    let Ok(loc) = resolve(&path) else { return };
    assert_eq!(resolve(&loc.virtual_path()).as_ref(), Ok(&loc), "{path:?}");
    match &loc {
        Location::Area { area, rest, .. } => {
            assert!(!area.starts_with('.'), "{path:?} reaches a hidden name");
            for c in rest {
                assert!(!c.starts_with('.') && !c.contains('/'), "{path:?} reaches {c:?}");
            }
        }
        Location::Announcement(name) => {
            assert!(!name.starts_with('.') && !name.contains('/'), "{path:?}");
        }
        _ => {}
    }
    let joblog_101: AuthorityId = "kommune/101".parse().unwrap();
    let visible = BTreeMap::from([(joblog_101, BTreeSet::from(["joblog".to_string()]))]);
    if loc.is_visible(&visible) {
        match &loc {
            Location::Root | Location::Ledger | Location::Announcements | Location::Announcement(_) => {}
            Location::Kind(k) => assert_eq!(*k, AuthorityKind::Kommune),
            Location::Authority(a) => assert_eq!(*a, joblog_101),
            Location::Area { authority, area, .. } => {
                assert_eq!(*authority, joblog_101);
                assert_eq!(area, "joblog");
            }
        }
    }
});
