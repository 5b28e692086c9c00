use super::*;
use proptest::prelude::*;

/// The fields a request is built from; requests borrow from them.
#[derive(Debug, Clone)]
struct Parts {
    which: u8,
    id: u32,
    a: String,
    b: String,
    bytes: Vec<u8>,
    handle: Vec<u8>,
    offset: u64,
    n: u32,
    attrs: Attrs,
}

fn attrs() -> impl Strategy<Value = Attrs> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<(u32, u32)>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<(u32, u32)>()),
    )
        .prop_map(|(size, uid_gid, permissions, times)| Attrs {
            size,
            uid_gid,
            permissions,
            times,
        })
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        0u8..21,
        any::<u32>(),
        ".{0,24}",
        ".{0,24}",
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..=MAX_HANDLE),
        any::<u64>(),
        any::<u32>(),
        attrs(),
    )
        .prop_map(|(which, id, a, b, bytes, handle, offset, n, attrs)| Parts {
            which,
            id,
            a,
            b,
            bytes,
            handle,
            offset,
            n,
            attrs,
        })
}

/// Packet types no client request uses: they decode as `Unknown`.
const UNKNOWN_KINDS: [u8; 4] = [2, 21, 101, 255];

fn request(p: &Parts) -> Request<'_> {
    let (id, a, b, h, attrs) = (p.id, p.a.as_str(), p.b.as_str(), &p.handle[..], p.attrs);
    match p.which {
        0 => Request::Init { version: p.n },
        1 => Request::Open {
            id,
            path: a,
            pflags: p.n,
            attrs,
        },
        2 => Request::Close { id, handle: h },
        3 => Request::Read {
            id,
            handle: h,
            offset: p.offset,
            len: p.n,
        },
        4 => Request::Write {
            id,
            handle: h,
            offset: p.offset,
            data: &p.bytes,
        },
        5 => Request::Lstat { id, path: a },
        6 => Request::Fstat { id, handle: h },
        7 => Request::Setstat { id, path: a, attrs },
        8 => Request::Fsetstat {
            id,
            handle: h,
            attrs,
        },
        9 => Request::Opendir { id, path: a },
        10 => Request::Readdir { id, handle: h },
        11 => Request::Remove { id, path: a },
        12 => Request::Mkdir { id, path: a, attrs },
        13 => Request::Rmdir { id, path: a },
        14 => Request::Realpath { id, path: a },
        15 => Request::Stat { id, path: a },
        16 => Request::Rename { id, from: a, to: b },
        17 => Request::Readlink { id, path: a },
        18 => Request::Symlink {
            id,
            link: a,
            target: b,
        },
        19 => Request::Extended {
            id,
            name: a,
            data: &p.bytes,
        },
        _ => Request::Unknown {
            id,
            kind: UNKNOWN_KINDS[p.n as usize % UNKNOWN_KINDS.len()],
        },
    }
}

fn encoded(r: &Request<'_>) -> BytesMut {
    let mut out = BytesMut::new();
    put_request(&mut out, r);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every request decodes to what was encoded.
    #[test]
    fn requests_round_trip(p in parts()) {
        let r = request(&p);
        let mut frames = Frames::default();
        frames.extend(&encoded(&r));
        let packet = frames.next_packet().unwrap().expect("a whole packet");
        prop_assert_eq!(decode(&packet).unwrap(), r);
        prop_assert_eq!(frames.pending(), 0);
    }

    /// Packets split anywhere in the stream come out whole and in order.
    #[test]
    fn packets_split_anywhere_come_out_whole(
        ps in proptest::collection::vec(parts(), 1..6),
        cuts in proptest::collection::vec(1usize..200, 1..40),
    ) {
        let requests: Vec<Request<'_>> = ps.iter().map(request).collect();
        let stream: Vec<u8> = requests.iter().flat_map(|r| encoded(r).to_vec()).collect();
        let mut frames = Frames::default();
        let mut got = Vec::new();
        let (mut at, mut cut) = (0, cuts.iter().cycle());
        while at < stream.len() {
            let end = (at + cut.next().unwrap()).min(stream.len());
            frames.extend(&stream[at..end]);
            at = end;
            while let Some(packet) = frames.next_packet().unwrap() {
                got.push(packet);
            }
        }
        let decoded: Vec<Request<'_>> = got.iter().map(|p| decode(p).unwrap()).collect();
        prop_assert_eq!(decoded, requests);
    }

    /// A request cut short is refused, never misread, and keeps its id
    /// where the id was whole.
    #[test]
    fn a_cut_request_is_malformed(p in parts(), keep in any::<prop::sample::Index>()) {
        prop_assume!(!matches!(p.which, 0 | 19 | 20));
        let r = request(&p);
        let packet = encoded(&r)[4..].to_vec();
        let keep = keep.index(packet.len() - 1) + 1;
        match decode(&packet[..keep]) {
            Err(WireError::Malformed { id, .. }) => {
                prop_assert_eq!(id, (keep >= 5).then_some(p.id));
            }
            other => prop_assert!(false, "{other:?} from {keep} of {} bytes", packet.len()),
        }
    }

    /// Any bytes at all: an answer, never a panic.
    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
        let mut frames = Frames::default();
        frames.extend(&bytes);
        while let Ok(Some(p)) = frames.next_packet() {
            let _ = decode(&p);
        }
    }

    /// A DATA reply read straight into the buffer, its header written after
    /// the read, is the bytes the draft specifies, whatever came before it.
    #[test]
    fn data_replies_are_built_in_place(
        id in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        ask in 0u32..4000,
        before in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut out = BytesMut::from(&before[..]);
        let reply = begin_data(&mut out);
        let got = data.len().min(ask as usize);
        out.extend_from_slice(&data[..got]);
        prop_assert_eq!(reply.len(&out), got);
        reply.finish(&mut out, id);
        let mut want = before.clone();
        want.extend_from_slice(&(9 + got as u32).to_be_bytes());
        want.push(103);
        want.extend_from_slice(&id.to_be_bytes());
        want.extend_from_slice(&(got as u32).to_be_bytes());
        want.extend_from_slice(&data[..got]);
        prop_assert_eq!(&out[..], &want[..]);
    }
}

#[test]
fn a_status_reply_is_byte_exact() {
    let mut out = BytesMut::new();
    put_status(&mut out, 7, StatusCode::NoSuchFile, "no such file");
    let mut want = vec![0, 0, 0, 31, 101, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, 12];
    want.extend_from_slice(b"no such file");
    want.extend_from_slice(&[0, 0, 0, 2, b'e', b'n']);
    assert_eq!(&out[..], &want[..]);
}

#[test]
fn a_name_reply_carries_its_entries_and_attributes() {
    let mut out = BytesMut::new();
    let attrs = Attrs {
        size: Some(5),
        permissions: Some(0o100444),
        times: Some((1, 2)),
        uid_gid: None,
    };
    put_name(
        &mut out,
        3,
        &[Entry {
            name: "a",
            long: "-r--r--r-- a",
            attrs,
        }],
    );
    let mut want = vec![104, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 12];
    want.extend_from_slice(b"-r--r--r-- a");
    want.extend_from_slice(&[0, 0, 0, 0x0d, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0x81, 0x24]);
    want.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    assert_eq!(
        u32::from_be_bytes(out[..4].try_into().unwrap()) as usize,
        want.len()
    );
    assert_eq!(&out[4..], &want[..]);
}

#[test]
fn version_and_limits_replies() {
    let mut out = BytesMut::new();
    put_version(&mut out, &[("limits@openssh.com", "1")]);
    let mut want = vec![2, 0, 0, 0, 3, 0, 0, 0, 18];
    want.extend_from_slice(b"limits@openssh.com");
    want.extend_from_slice(&[0, 0, 0, 1, b'1']);
    assert_eq!(&out[4..], &want[..]);
    let mut out = BytesMut::new();
    put_limits(&mut out, 9, 64);
    assert_eq!(out[4], 201);
    assert_eq!(&out[5..9], &9u32.to_be_bytes());
    let field = |i: usize| u64::from_be_bytes(out[9 + 8 * i..17 + 8 * i].try_into().unwrap());
    assert_eq!(
        (field(0), field(1), field(2), field(3)),
        (MAX_PACKET as u64, u64::from(MAX_READ), 0, 64)
    );
    assert_eq!(out.len(), 4 + 1 + 4 + 32);
}

#[test]
fn too_long_and_empty_packets_are_refused() {
    let mut f = Frames::default();
    f.extend(&((MAX_PACKET as u32) + 1).to_be_bytes());
    assert_eq!(f.next_packet(), Err(WireError::TooLong(MAX_PACKET + 1)));
    let mut f = Frames::default();
    f.extend(&[0, 0, 0, 0]);
    assert_eq!(f.next_packet(), Err(WireError::Empty));
    // A packet at the limit waits for its bytes.
    let mut f = Frames::default();
    f.extend(&(MAX_PACKET as u32).to_be_bytes());
    assert_eq!(f.next_packet(), Ok(None));
}

#[test]
fn bad_paths_handles_and_trailing_bytes_are_malformed_with_their_id() {
    // A path that is not UTF-8.
    let packet = [17, 0, 0, 0, 4, 0, 0, 0, 2, 0xff, 0xfe];
    assert!(matches!(
        decode(&packet),
        Err(WireError::Malformed {
            kind: 17,
            id: Some(4),
            what: "path"
        })
    ));
    // A handle longer than 256 bytes.
    let mut out = BytesMut::new();
    let long = vec![1u8; MAX_HANDLE + 1];
    put_request(
        &mut out,
        &Request::Close {
            id: 5,
            handle: &long,
        },
    );
    assert!(matches!(
        decode(&out[4..]),
        Err(WireError::Malformed { id: Some(5), .. })
    ));
    // A byte after the last field.
    let mut out = BytesMut::new();
    put_request(&mut out, &Request::Stat { id: 6, path: "/" });
    let mut packet = out[4..].to_vec();
    packet.push(0);
    assert!(matches!(
        decode(&packet),
        Err(WireError::Malformed {
            id: Some(6),
            what: "bytes after the last field",
            ..
        })
    ));
    // Extended attributes are read past.
    let mut packet = vec![3, 0, 0, 0, 1, 0, 0, 0, 1, b'f', 0, 0, 0, 1];
    packet.extend_from_slice(&[
        0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'k', 0, 0, 0, 1, b'v',
    ]);
    assert_eq!(
        decode(&packet),
        Ok(Request::Open {
            id: 1,
            path: "f",
            pflags: 1,
            attrs: Attrs::default()
        })
    );
}

#[test]
fn an_abandoned_data_reply_leaves_the_buffer_as_it_was() {
    let mut out = BytesMut::from(&b"earlier"[..]);
    let reply = begin_data(&mut out);
    out.extend_from_slice(&[7; 100]);
    reply.abandon(&mut out);
    assert_eq!(&out[..], b"earlier");
}

#[test]
#[should_panic(expected = "DATA longer than MAX_READ")]
fn a_data_reply_longer_than_a_read_may_be_is_a_bug() {
    let mut out = BytesMut::new();
    let reply = begin_data(&mut out);
    out.resize(out.len() + MAX_READ as usize + 1, 0);
    reply.finish(&mut out, 1);
}

#[test]
fn attribute_flags_version_3_does_not_define_are_ignored() {
    // OPEN "f" with attribute flags 0x10 (not a version 3 flag) and no fields.
    let packet = [3, 0, 0, 0, 1, 0, 0, 0, 1, b'f', 0, 0, 0, 1, 0, 0, 0, 0x10];
    assert_eq!(
        decode(&packet),
        Ok(Request::Open {
            id: 1,
            path: "f",
            pflags: 1,
            attrs: Attrs::default()
        })
    );
}
