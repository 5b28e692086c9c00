//! The PROXY protocol, version 2, from a load balancer the config trusts
//! (`[sftp] proxy_protocol_from`): the header it sends before the SSH
//! stream names the supplier's own address, which the front door then
//! admits, bans, logs and audits. `parse` is pure (the header parsed by the
//! `ppp` crate); `read_header` reads exactly the header off the socket, so
//! not one byte of SSH is taken.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;

/// The 12 bytes every version 2 header starts with.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family, and the length of the rest.
const FIXED: usize = 16;
/// The longest header accepted: addresses (at most 216 bytes for UNIX
/// sockets) and a few TLVs; HAProxy sends far less.
const MAX_REST: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol v2 header (the connection came from a balancer that must send one)")]
    Missing,
    #[error("PROXY header longer than {MAX_REST} bytes")]
    TooLong,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("PROXY header for a protocol other than TCP over IPv4 or IPv6")]
    NotTcp,
    #[error("PROXY header not received in time")]
    TimedOut,
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// The client's address a whole header names: `Some` for a proxied TCP
/// connection, `None` for the balancer's own (a LOCAL command, such as a
/// health check).
pub fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    if !header.starts_with(SIGNATURE) {
        return Err(ProxyError::Missing);
    }
    let h = Header::try_from(header).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    if h.len() != header.len() {
        return Err(ProxyError::Invalid("trailing bytes".into()));
    }
    if h.command == Command::Local {
        return Ok(None);
    }
    match h.addresses {
        Addresses::IPv4(a) => Ok(Some(SocketAddr::from((a.source_address, a.source_port)))),
        Addresses::IPv6(a) => Ok(Some(SocketAddr::from((a.source_address, a.source_port)))),
        Addresses::Unix(_) | Addresses::Unspecified => Err(ProxyError::NotTcp),
    }
}

/// Reads one header off `stream` within `limit` and returns the address
/// it names (see [`parse`]).
pub async fn read_header<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: std::time::Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    let read = async {
        let mut fixed = [0u8; FIXED];
        stream
            .read_exact(&mut fixed)
            .await
            .map_err(|e| ProxyError::Io(e.to_string()))?;
        if !fixed.starts_with(SIGNATURE) {
            return Err(ProxyError::Missing);
        }
        let rest = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        if rest > MAX_REST {
            return Err(ProxyError::TooLong);
        }
        let mut header = Vec::with_capacity(FIXED + rest);
        header.extend_from_slice(&fixed);
        header.resize(FIXED + rest, 0);
        stream
            .read_exact(&mut header[FIXED..])
            .await
            .map_err(|e| ProxyError::Io(e.to_string()))?;
        parse(&header)
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Err(ProxyError::TimedOut))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as HAProxy's `send-proxy-v2` writes it for TCP over IPv4.
    fn v4(command: u8, src: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(0x11);
        h.extend_from_slice(&12u16.to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&2222u16.to_be_bytes());
        h
    }

    #[test]
    fn a_proxied_connection_names_the_clients_address() {
        assert_eq!(
            parse(&v4(1, [192, 0, 2, 7], 40_000)),
            Ok(Some("192.0.2.7:40000".parse().unwrap()))
        );
        // LOCAL: the balancer speaking for itself (a health check).
        assert_eq!(parse(&v4(0, [0; 4], 0)), Ok(None));
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.2\r\n"), Err(ProxyError::Missing));
        let mut bad_version = v4(1, [192, 0, 2, 7], 1);
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ProxyError::Invalid(_))));
        let mut trailing = v4(1, [192, 0, 2, 7], 1);
        trailing.push(b'S');
        assert!(matches!(parse(&trailing), Err(ProxyError::Invalid(_))));
        let mut unix = SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31]);
        unix.extend_from_slice(&216u16.to_be_bytes());
        unix.extend_from_slice(&[0u8; 216]);
        assert_eq!(parse(&unix), Err(ProxyError::NotTcp));
    }

    #[tokio::test]
    async fn exactly_the_header_is_read_off_the_stream() {
        let mut bytes = v4(1, [192, 0, 2, 7], 40_000);
        bytes.extend_from_slice(b"SSH-2.0-client\r\n");
        let mut stream = &bytes[..];
        let limit = std::time::Duration::from_secs(1);
        assert_eq!(
            read_header(&mut stream, limit).await,
            Ok(Some("192.0.2.7:40000".parse().unwrap()))
        );
        assert_eq!(stream, b"SSH-2.0-client\r\n", "the SSH stream is untouched");
        let mut ssh = &b"SSH-2.0-OpenSSH_9.2 and more\r\n"[..];
        assert_eq!(read_header(&mut ssh, limit).await, Err(ProxyError::Missing));
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            read_header(&mut &long[..], limit).await,
            Err(ProxyError::TooLong)
        );
        let mut short = &v4(1, [192, 0, 2, 7], 1)[..10];
        assert!(matches!(
            read_header(&mut short, limit).await,
            Err(ProxyError::Io(_))
        ));
    }
}
