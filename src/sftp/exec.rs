//! The few commands an SFTP-only server answers itself: `md5sum`, `sha1sum`
//! and `sha256sum` of one published file (or of standard input), so that
//! tools such as rclone compare hashes rather than sizes. udstil computes
//! them; nothing is run, and there is no shell.
//!
//! Pure: parsing the command line (POSIX quoting, as rclone and scripts
//! send it) and formatting the answer.

// md-5 and sha1 come from a newer `digest` than sha2: two traits of one name.
use md5::{Digest as _, Md5};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5sum",
            Algorithm::Sha1 => "sha1sum",
            Algorithm::Sha256 => "sha256sum",
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }
}

/// A running hash of one of the algorithms.
pub enum Hasher {
    Md5(Md5),
    Sha1(Sha1),
    Sha256(Sha256),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    pub fn hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

/// A command udstil answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    /// The file; `None` hashes standard input (rclone's probe: `md5sum` alone).
    pub path: Option<String>,
}

/// What an exec request asks, or why it is refused (said to the client).
pub fn parse(command: &[u8]) -> Result<Checksum, String> {
    const ONLY: &str = "this service offers SFTP only; `md5sum`, `sha1sum` and `sha256sum` of one file are answered";
    let text = std::str::from_utf8(command).map_err(|_| ONLY.to_string())?;
    let words = split(text).ok_or_else(|| ONLY.to_string())?;
    let (name, args) = words.split_first().ok_or_else(|| ONLY.to_string())?;
    let algorithm = match name.as_str() {
        "md5sum" => Algorithm::Md5,
        "sha1sum" => Algorithm::Sha1,
        "sha256sum" => Algorithm::Sha256,
        _ => return Err(ONLY.into()),
    };
    match args {
        [] => Ok(Checksum {
            algorithm,
            path: None,
        }),
        [path] if !path.starts_with('-') => Ok(Checksum {
            algorithm,
            path: Some(path.clone()),
        }),
        _ => Err(format!("{}: give exactly one file, no options", name)),
    }
}

/// Splits a command line into words as a POSIX shell would for plain words,
/// backslash escapes and single and double quotes. Anything a shell would
/// act on (`;`, `|`, `$`, redirections, globs, ...) unquoted is refused:
/// there is no shell to do it.
fn split(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next()? {
                    // A backslash-newline is a line continuation.
                    '\n' => {}
                    e => word.push(e),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        e => word.push(e),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            e @ ('"' | '\\' | '$' | '`') => word.push(e),
                            '\n' => {}
                            e => {
                                word.push('\\');
                                word.push(e);
                            }
                        },
                        '$' | '`' => return None,
                        e => word.push(e),
                    }
                }
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' | '[' | '#' | '~'
            | '\n' | '\r' | '{' | '}' => return None,
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// The answer line, as coreutils prints it (`<hex>  <name>`; `-` for input).
pub fn line(hex: &str, path: Option<&str>) -> String {
    format!("{hex}  {}\n", path.unwrap_or("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(cmd: &str, algorithm: Algorithm, path: Option<&str>) {
        assert_eq!(
            parse(cmd.as_bytes()),
            Ok(Checksum {
                algorithm,
                path: path.map(str::to_string)
            }),
            "{cmd}"
        );
    }

    #[test]
    fn checksum_commands_parse_with_the_quoting_clients_send() {
        use Algorithm::*;
        ok("md5sum", Md5, None);
        ok("sha1sum", Sha1, None);
        ok("sha256sum /a/b.parquet", Sha256, Some("/a/b.parquet"));
        // rclone escapes with backslashes.
        ok(
            r"sha1sum /kommune/101/joblog/v1/full/000001_20261204T010000Z/part\ 0.parquet",
            Sha1,
            Some("/kommune/101/joblog/v1/full/000001_20261204T010000Z/part 0.parquet"),
        );
        ok("md5sum '/a b/c'", Md5, Some("/a b/c"));
        ok("md5sum \"/a b/c\"", Md5, Some("/a b/c"));
        ok("  sha256sum   x  ", Sha256, Some("x"));
    }

    #[test]
    fn anything_else_is_refused_and_nothing_reaches_a_shell() {
        for cmd in [
            "",
            "ls",
            "echo ${ShellId}%ComSpec%",
            "sha256sum a; rm -rf /",
            "sha256sum a | nc x 1",
            "sha256sum $(id)",
            "sha256sum `id`",
            "sha256sum \"$HOME\"",
            "sha256sum a b",
            "sha256sum -c SHA256SUMS",
            "sha256sum *.parquet",
            "sha256sum 'unterminated",
            "sha256sum a > b",
            "scp -f x",
        ] {
            assert!(parse(cmd.as_bytes()).is_err(), "{cmd:?} was accepted");
        }
        assert!(parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn hashes_match_coreutils_for_empty_input() {
        let empty = |a: Algorithm| a.hasher().hex();
        assert_eq!(empty(Algorithm::Md5), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            empty(Algorithm::Sha1),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(
            empty(Algorithm::Sha256),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(line("ab", None), "ab  -\n");
        assert_eq!(line("ab", Some("/x")), "ab  /x\n");
    }
}
