//! Coverage-guided fuzzing of the SFTP codec (`sftp::wire`): any bytes a
//! client sends are framed and decoded without a panic, and every request
//! that decodes encodes back to a packet no longer than its own that decodes
//! to the same request (the same bytes, except where the decoder read past
//! what it does not keep: extended attributes, INIT's extension pairs, and
//! attribute flag bits version 3 does not define, which it ignores as
//! OpenSSH's sftp-server does).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use udstil::sftp::wire::{Frames, Request, decode, put_request};

fuzz_target!(|data: &[u8]| {
    let mut frames = Frames::default();
    // Fed in two parts, so a packet split across channel messages is covered.
    let half = data.len() / 2;
    frames.extend(&data[..half]);
    let mut packets = Vec::new();
    while let Ok(Some(p)) = frames.next_packet() {
        packets.push(p);
    }
    frames.extend(&data[half..]);
    while let Ok(Some(p)) = frames.next_packet() {
        packets.push(p);
    }
    for packet in &packets {
        let Ok(request) = decode(packet) else { continue };
        let mut out = BytesMut::new();
        put_request(&mut out, &request);
        let again = decode(&out[4..]).expect("an encoded request decodes");
        assert_eq!(again, request);
        if let Request::Unknown { .. } = request {
            continue;
        }
        let lossless = out[4..] == packet[..];
        assert!(
            lossless || packet.len() >= out.len() - 4,
            "a request re-encoded longer than its packet"
        );
    }
});
