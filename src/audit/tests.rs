use super::*;

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(Action::Download, "complete")
                .supplier("bi-alpha")
                .bytes(i as u64 * 100)
                .detail(&format!("event {i}"))
        })
        .collect()
}

fn verify(anchor: Option<Anchor>, rows: &[Record]) -> Result<Summary, Broken> {
    let mut v = Verifier::new(anchor);
    for r in rows {
        v.check(r)?;
    }
    v.finish()
}

#[test]
fn an_untouched_chain_verifies_and_continues_across_appends() {
    let mut rows = link(0, GENESIS, &events(5));
    let last = rows.last().unwrap().clone();
    rows.extend(link(last.id, &last.hash, &events(3)));
    let s = verify(None, &rows).unwrap();
    assert_eq!((s.rows, s.first_id, s.last_id), (8, Some(1), 8));
    assert_eq!(s.head_hash, rows[7].hash);
    assert!(rows.windows(2).all(|w| w[1].prev_hash == w[0].hash));
}

#[test]
fn every_field_is_covered_by_the_hash() {
    let rows = link(0, GENESIS, &events(3));
    let edits: Vec<fn(&mut Event)> = vec![
        |e| e.at.push('0'),
        |e| e.action = "listing".into(),
        |e| e.outcome = "incomplete".into(),
        |e| e.supplier = Some("bi-beta".into()),
        |e| e.authority = Some("kommune/101".into()),
        |e| e.area = Some("joblog".into()),
        |e| e.load_id = Some("000001_20261122T000000Z".into()),
        |e| e.file = Some("/x".into()),
        |e| e.address = Some("10.0.0.1".into()),
        |e| e.key_fingerprint = Some("SHA256:x".into()),
        |e| e.bytes = Some(1),
        |e| e.detail = None,
    ];
    for edit in edits {
        let mut tampered = rows.clone();
        edit(&mut tampered[1].event);
        let err = verify(None, &tampered).unwrap_err();
        assert_eq!(err.id, 2);
        assert!(err.reason.contains("does not match its contents"), "{err}");
    }
}

#[test]
fn a_none_field_and_an_empty_field_hash_differently() {
    let a = Event::new(Action::Login, "ok");
    let mut b = a.clone();
    b.supplier = Some(String::new());
    assert_ne!(chain_hash(GENESIS, 1, &a), chain_hash(GENESIS, 1, &b));
}

#[test]
fn a_rehashed_edit_breaks_the_next_link() {
    let mut rows = link(0, GENESIS, &events(4));
    rows[1].event.bytes = Some(999_999);
    rows[1].hash = chain_hash(&rows[1].prev_hash, 2, &rows[1].event);
    let err = verify(None, &rows).unwrap_err();
    assert_eq!(err.id, 3);
    assert!(err.reason.contains("previous row"), "{err}");
}

#[test]
fn removed_and_reordered_rows_are_found() {
    let rows = link(0, GENESIS, &events(4));
    let mut gap = rows.clone();
    gap.remove(2);
    let err = verify(None, &gap).unwrap_err();
    assert_eq!(err.id, 3);
    assert!(err.reason.contains("missing"), "{err}");

    let mut head_cut = rows.clone();
    head_cut.remove(0);
    assert_eq!(verify(None, &head_cut).unwrap_err().id, 1);

    let mut swapped = rows.clone();
    swapped.swap(1, 2);
    assert_eq!(verify(None, &swapped).unwrap_err().id, 2);
}

#[test]
fn a_pruned_chain_verifies_only_with_the_anchor_its_prune_event_names() {
    let rows = link(0, GENESIS, &events(6));
    let anchor = Anchor {
        last_removed_id: 3,
        last_removed_hash: rows[2].hash.clone(),
    };
    let prune = Event::new(Action::AuditPruned, "ok").detail(&anchor.detail());
    let mut kept = rows[3..].to_vec();
    let last = kept.last().unwrap().clone();
    kept.extend(link(last.id, &last.hash, &[prune]));
    let s = verify(Some(anchor.clone()), &kept).unwrap();
    assert_eq!((s.first_id, s.last_id), (Some(4), 7));

    // Cutting one more row and moving the anchor along is found.
    let moved = Anchor {
        last_removed_id: 4,
        last_removed_hash: rows[3].hash.clone(),
    };
    let err = verify(Some(moved), &kept[1..]).unwrap_err();
    assert!(err.reason.contains("newest retention run"), "{err}");

    // An anchor with no prune event behind it is found too.
    let err = verify(Some(anchor), &rows[3..]).unwrap_err();
    assert!(err.reason.contains("no retention run"), "{err}");
}

#[test]
fn person_keys_ignore_the_dash_and_depend_on_the_secret() {
    let k = PersonKey::new(&[7u8; 32]);
    assert_eq!(k.person("010190-1234"), k.person("0101901234"));
    assert_ne!(k.person("0101901234"), k.person("0101901235"));
    assert_ne!(
        k.person("0101901234"),
        PersonKey::new(&[8u8; 32]).person("0101901234")
    );
    assert_eq!(parse_cpr(" 010190-1234 ").as_deref(), Some("0101901234"));
    assert_eq!(parse_cpr("01019012345"), None);
    assert_eq!(parse_cpr("01019O1234"), None);
}

#[test]
fn actions_round_trip() {
    for a in Action::ALL {
        assert_eq!(Action::parse(a.as_str()), Some(a));
    }
    assert_eq!(Action::parse("nope"), None);
}

#[test]
fn a_location_fills_authority_area_and_load() {
    let loc =
        crate::tree::resolve("/kommune/101/joblog/v1/full/000003_20261122T020000Z/joblog.parquet")
            .unwrap();
    let e = Event::new(Action::FileOpen, "ok").location(&loc);
    assert_eq!(e.authority.as_deref(), Some("kommune/101"));
    assert_eq!(e.area.as_deref(), Some("joblog"));
    assert_eq!(e.load_id.as_deref(), Some("000003_20261122T020000Z"));
    assert_eq!(
        e.file.as_deref(),
        Some("/kommune/101/joblog/v1/full/000003_20261122T020000Z/joblog.parquet")
    );
}
