//! Git LFS pointer files, spec v1, read as git-lfs reads them: its decoder (`DecodePointer` in
//! git-lfs's lfs/pointer.go) is the reference, so that a file exp's filter and git-lfs both
//! clean becomes one blob, not two (docs/design.md §6).
//!
//! git-lfs's reader is more lenient than the spec: it trims white space around the text,
//! takes CRLF line ends, blank lines and a missing final newline, the two pre-release version
//! URLs, and extension lines (`ext-N-name sha256:…`) anywhere before `size`; it refuses any
//! other key. Its clean passes such a pointer through byte for byte; its smudge, when it
//! cannot produce the object, writes the pointer re-encoded ([`LfsPointer::encode`]).

use std::fmt;

use super::LfsError;

const VERSION_URL: &str = "https://git-lfs.github.com/spec/v1";
/// The version URLs git-lfs reads as spec v1 (its `v1Aliases`): the alpha's, the
/// pre-release's, and the public one, which is the only one ever written.
const VERSION_ALIASES: [&str; 3] = [
    "http://git-media.io/v/2",
    "https://hawser.github.com/spec/v1",
    VERSION_URL,
];
/// The largest input read as a possible pointer: git-lfs takes no blob of 1024 bytes or more
/// for a pointer (its `blobSizeCutoff`), whatever the bytes say.
pub const MAX_POINTER: usize = 1023;

/// A SHA-256 LFS object id: exactly 64 lower-case hex digits, checked before it touches a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid(String);

impl Oid {
    /// Validates `hex`.
    pub fn parse(hex: &str) -> Result<Oid, LfsError> {
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Oid(hex.to_string()))
        } else {
            Err(LfsError::BadOid(hex.to_string()))
        }
    }

    /// From a finished SHA-256 digest.
    pub fn from_digest(digest: &[u8]) -> Oid {
        Oid(hex::encode(digest))
    }

    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pointer extension line, `ext-<priority>-<name> sha256:<oid>`: the object as it was
/// before extension `name` (a program git-lfs runs in clean and smudge) transformed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The order the extension ran in: one digit.
    pub priority: u8,
    /// The extension's name, as bytes: git-lfs checks only that it starts with a word
    /// character, so it may hold anything but a space or a newline.
    pub name: Vec<u8>,
    /// The object before the extension ran.
    pub oid: Oid,
}

/// A parsed pointer: oid, size, and any extensions (sorted by priority).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfsPointer {
    /// The object id.
    pub oid: Oid,
    /// The object's size in bytes (at most `i64::MAX`, as git-lfs reads it).
    pub size: u64,
    /// Extension lines, sorted by priority; exp runs no extensions.
    pub extensions: Vec<Extension>,
}

impl LfsPointer {
    /// A pointer to an object.
    pub fn new(oid: Oid, size: u64) -> Self {
        LfsPointer {
            oid,
            size,
            extensions: Vec::new(),
        }
    }

    /// The canonical text, as git-lfs writes it: the version, the extensions by priority,
    /// then oid and size (text only lossy for an extension name that is not UTF-8;
    /// [`LfsPointer::encode_bytes`] is exact).
    pub fn encode(&self) -> String {
        String::from_utf8_lossy(&self.encode_bytes()).into_owned()
    }

    /// The canonical text's bytes.
    pub fn encode_bytes(&self) -> Vec<u8> {
        let mut out = format!("version {VERSION_URL}\n").into_bytes();
        for ext in &self.extensions {
            out.extend_from_slice(format!("ext-{}-", ext.priority).as_bytes());
            out.extend_from_slice(&ext.name);
            out.extend_from_slice(format!(" sha256:{}\n", ext.oid).as_bytes());
        }
        out.extend_from_slice(format!("oid sha256:{}\nsize {}\n", self.oid, self.size).as_bytes());
        out
    }

    /// Parses pointer text as git-lfs's `DecodePointer` does (lfs/pointer.go, read at v3.3.0
    /// and v3.7): white space around the text is trimmed (Unicode white space, as Go's
    /// `bytes.TrimSpace`); lines end in LF, one CR before it dropped; blank lines are skipped;
    /// the keys are `version`, `oid`, `size` in that order, with extension lines
    /// (`ext-<digit>-<word>…`) anywhere before `size` and nothing after it. The version is one
    /// of git-lfs's three v1 URLs, the oid `sha256:` and 64 lower-case hex digits, the size
    /// what Go's `strconv.ParseInt` reads (a sign, decimal digits) and not negative. The same
    /// extension key twice counts once (the last); two extensions of one priority are refused.
    /// An empty input is no pointer here: callers treat it as the empty file, as git-lfs does.
    pub fn parse(bytes: &[u8]) -> Result<LfsPointer, LfsError> {
        if bytes.len() > MAX_POINTER {
            return Err(LfsError::BadPointer(format!(
                "{} bytes, larger than any pointer file ({MAX_POINTER} bytes at most)",
                bytes.len()
            )));
        }
        LfsPointer::decode(bytes)
    }

    /// What git-lfs's smudge takes for a pointer: the first `MAX_POINTER + 1` bytes of the
    /// input decoded, whatever follows them (its `DecodeFrom` reads one buffer of
    /// `blobSizeCutoff` bytes; only its clean checks that the input ended there). `head` is
    /// the input's start, at most that long.
    pub fn parse_smudge_head(head: &[u8]) -> Result<LfsPointer, LfsError> {
        LfsPointer::decode(&head[..head.len().min(MAX_POINTER + 1)])
    }

    /// [`LfsPointer::parse`] without the size limit.
    fn decode(bytes: &[u8]) -> Result<LfsPointer, LfsError> {
        let bad = |m: String| LfsError::BadPointer(m);
        let text = trim_space(bytes);
        if text.is_empty() {
            return Err(bad("empty".into()));
        }
        const KEYS: [&[u8]; 3] = [b"version", b"oid", b"size"];
        let mut values: [Option<&[u8]>; 3] = [None; 3];
        let mut seen = 0;
        // Extension lines by key, the last one winning (git-lfs keeps them in a map).
        let mut extension_lines: Vec<(&[u8], &[u8])> = Vec::new();
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let space = line
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| bad(format!("a line without `key value`: {}", show(line))))?;
            let (key, value) = (&line[..space], &line[space + 1..]);
            if seen == KEYS.len() {
                return Err(bad(format!("a line after `size`: {}", show(line))));
            }
            if key == KEYS[seen] {
                values[seen] = Some(value);
                seen += 1;
            } else if is_extension_key(key) {
                match extension_lines.iter_mut().find(|(k, _)| *k == key) {
                    Some(entry) => entry.1 = value,
                    None => extension_lines.push((key, value)),
                }
            } else {
                return Err(bad(format!(
                    "expected the key `{}`, found {}",
                    String::from_utf8_lossy(KEYS[seen]),
                    show(key)
                )));
            }
        }
        let [version, oid, size] = values;
        let version = version.ok_or_else(|| bad("no version line".into()))?;
        if !VERSION_ALIASES.iter().any(|v| v.as_bytes() == version) {
            return Err(bad(format!("unknown version {}", show(version))));
        }
        let oid = parse_oid(oid.ok_or_else(|| bad("no oid line".into()))?)?;
        let size = size.ok_or_else(|| bad("no size line".into()))?;
        let size = parse_size(size).ok_or_else(|| bad(format!("invalid size {}", show(size))))?;
        let mut extensions: Vec<Extension> = Vec::new();
        for (key, value) in extension_lines {
            let priority = key[4] - b'0';
            if extensions.iter().any(|e| e.priority == priority) {
                return Err(bad(format!("two extensions of priority {priority}")));
            }
            extensions.push(Extension {
                priority,
                name: key[6..].to_vec(),
                oid: parse_oid(value)?,
            });
        }
        extensions.sort_by_key(|e| e.priority);
        Ok(LfsPointer {
            oid,
            size,
            extensions,
        })
    }
}

/// Whether `key` names an extension: git-lfs's `\Aext-\d{1}-\w+`, a prefix match.
fn is_extension_key(key: &[u8]) -> bool {
    key.len() > 6
        && key.starts_with(b"ext-")
        && key[4].is_ascii_digit()
        && key[5] == b'-'
        && (key[6].is_ascii_alphanumeric() || key[6] == b'_')
}

/// `sha256:` and 64 lower-case hex digits.
fn parse_oid(value: &[u8]) -> Result<Oid, LfsError> {
    let hex = value
        .strip_prefix(b"sha256:")
        .ok_or_else(|| LfsError::BadPointer(format!("the oid {} is not `sha256:`", show(value))))?;
    Oid::parse(&String::from_utf8_lossy(hex))
}

/// A size as Go's `strconv.ParseInt(value, 10, 64)` reads it (an optional sign, then decimal
/// digits, within i64), refused when negative as git-lfs does.
fn parse_size(value: &[u8]) -> Option<u64> {
    let (negative, digits) = match value.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, value),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (magnitude <= i64::MAX as u64 && (!negative || magnitude == 0)).then_some(magnitude)
}

/// `bytes` without leading and trailing white space, as Go's `bytes.TrimSpace` cuts it:
/// Unicode white space (NBSP, U+3000, … as well as ASCII), each a whole UTF-8 character; a
/// byte that does not start a valid character stops the trim.
fn trim_space(mut bytes: &[u8]) -> &[u8] {
    let is_space = |c: &[u8]| {
        std::str::from_utf8(c)
            .ok()
            .and_then(|s| s.chars().next())
            .is_some_and(char::is_whitespace)
    };
    // The first (last) character is the shortest prefix (suffix) that is valid UTF-8.
    while let Some(n) = (1..=bytes.len().min(4)).find(|&n| std::str::from_utf8(&bytes[..n]).is_ok())
    {
        if !is_space(&bytes[..n]) {
            break;
        }
        bytes = &bytes[n..];
    }
    while let Some(n) =
        (1..=bytes.len().min(4)).find(|&n| std::str::from_utf8(&bytes[bytes.len() - n..]).is_ok())
    {
        if !is_space(&bytes[bytes.len() - n..]) {
            break;
        }
        bytes = &bytes[..bytes.len() - n];
    }
    bytes
}

/// Pointer bytes for a message: escaped, cut short.
fn show(bytes: &[u8]) -> String {
    let text: String = bytes
        .iter()
        .take(80)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    format!("\"{text}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    #[test]
    fn encodes_byte_for_byte() {
        let p = LfsPointer::new(Oid::parse(OID).unwrap(), 12345);
        assert_eq!(
            p.encode(),
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 12345\n")
        );
        assert_eq!(LfsPointer::parse(p.encode().as_bytes()).unwrap(), p);
    }

    #[test]
    fn keeps_extensions_sorted_by_priority() {
        let v = "version https://git-lfs.github.com/spec/v1";
        let text = format!(
            "{v}\next-2-b sha256:{OID}\next-0-foo sha256:{OID}\noid sha256:{OID}\nsize 1\n"
        );
        let p = LfsPointer::parse(text.as_bytes()).unwrap();
        assert_eq!(
            p.extensions
                .iter()
                .map(|e| (e.priority, e.name.clone()))
                .collect::<Vec<_>>(),
            vec![(0, b"foo".to_vec()), (2, b"b".to_vec())]
        );
        assert_eq!(
            p.encode(),
            format!(
                "{v}\next-0-foo sha256:{OID}\next-2-b sha256:{OID}\noid sha256:{OID}\nsize 1\n"
            )
        );
    }

    /// What git-lfs's decoder accepts beyond the canonical text (each checked against
    /// `git lfs clean`, which passes them through, and `git lfs smudge`), and what it refuses.
    #[test]
    fn reads_what_git_lfs_reads() {
        let good =
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 1\n");
        let expected = LfsPointer::new(Oid::parse(OID).unwrap(), 1);
        let ext = format!("ext-0-foo sha256:{OID}\n");
        for accepted in [
            good.replace('\n', "\r\n"),
            good.trim_end().to_string(),
            format!("{good}\n"),
            format!("\n \t{good}\u{a0}\u{3000}"),
            good.replacen('\n', "\n\r\n\n", 2),
            good.replace("git-lfs.github.com", "hawser.github.com"),
            good.replace(
                "https://git-lfs.github.com/spec/v1",
                "http://git-media.io/v/2",
            ),
            good.replace("size 1", "size +1"),
            good.replace("size 1", "size 0001"),
            format!("{}\r\r\n", good.trim_end()),
            format!("{ext}{good}"),
            good.replacen("size", &format!("{ext}size"), 1),
            format!("{good:\n<1023}"),
        ] {
            let parsed = LfsPointer::parse(accepted.as_bytes())
                .unwrap_or_else(|e| panic!("refused {accepted:?}: {e}"));
            assert_eq!(parsed.oid, expected.oid, "{accepted:?}");
            assert_eq!(parsed.size, 1, "{accepted:?}");
        }
        assert_eq!(
            LfsPointer::parse(good.replace("size 1", "size -0").as_bytes())
                .unwrap()
                .size,
            0
        );
        assert_eq!(
            LfsPointer::parse(
                good.replace("size 1", "size 9223372036854775807")
                    .as_bytes()
            )
            .unwrap()
            .size,
            i64::MAX as u64
        );
        for refused in [
            good.replace("size 1", "size -1"),
            good.replace("size 1", "size 1x"),
            good.replace("size 1", "size 0x1"),
            good.replace("size 1", "size 1_0"),
            good.replace("size 1", "size 9223372036854775808"),
            good.replace("sha256:", "md5:"),
            good.replace(OID, &OID.to_uppercase()),
            good.replace(OID, "../../etc/passwd"),
            good.replace("v1", "v2"),
            good.replace("v1\n", "v1 \n"),
            good.replacen('\n', "\r\r\n", 1),
            good.replacen(' ', "\t", 1),
            format!("version https://git-lfs.github.com/spec/v1\nsize 1\noid sha256:{OID}\n"),
            format!("{good}foo bar\n"),
            good.replacen("oid", "foo bar\noid", 1),
            format!("{good}{ext}"),
            good.replacen("oid", &format!("{ext}{}oid", ext.replace("foo", "bar")), 1),
            good.replacen("oid", &format!("ext-10-a sha256:{OID}\noid"), 1),
            "version https://git-lfs.github.com/spec/v1\nsize 1\n".into(),
            format!("{good:\n<1024}"),
            "\n \n".into(),
            String::new(),
        ] {
            assert!(
                LfsPointer::parse(refused.as_bytes()).is_err(),
                "accepted {refused:?}"
            );
        }
        assert!(Oid::parse(&OID[..63]).is_err());
    }
}

/// Fuzzing by property (`PROPTEST_CASES` sets the run length): the parser never panics, what
/// it accepts re-encodes to bytes it accepts as the same pointer (when the canonical text still
/// fits a pointer: `http://git-media.io/v/2` is shorter than the URL it becomes), and encoded
/// pointers parse.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn round_trips(p: &LfsPointer) -> bool {
        let bytes = p.encode_bytes();
        bytes.len() > MAX_POINTER || LfsPointer::parse(&bytes).ok().as_ref() == Some(p)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            if let Ok(p) = LfsPointer::parse(&bytes) {
                prop_assert!(round_trips(&p));
            }
        }

        #[test]
        fn pointer_like_text_never_panics(
            lines in proptest::collection::vec("(oid sha256:[0-9a-f]{60,66}|size [-+]?[0-9]{0,21}|ext-[0-9]-[a-z_]{1,3} sha256:[0-9a-f]{64}|[a-z.-]{0,6} [ -~]{0,20}|[ -~]{0,30}|\r|\u{a0})", 0..6),
        ) {
            let mut text = format!("version {VERSION_URL}\n");
            for l in &lines {
                text.push_str(l);
                text.push('\n');
            }
            if let Ok(p) = LfsPointer::parse(text.as_bytes()) {
                prop_assert!(round_trips(&p));
            }
        }

        #[test]
        fn encoded_pointers_round_trip(
            digest in proptest::collection::vec(any::<u8>(), 32),
            size in 0..=i64::MAX as u64,
            ext in proptest::collection::btree_map(0u8..10, "[a-z_][a-z0-9!-]{0,7}", 0..3),
        ) {
            let mut p = LfsPointer::new(Oid::from_digest(&digest), size);
            p.extensions = ext
                .into_iter()
                .map(|(priority, name)| Extension {
                    priority,
                    name: name.into_bytes(),
                    oid: Oid::from_digest(&digest),
                })
                .collect();
            prop_assert_eq!(LfsPointer::parse(&p.encode_bytes()).unwrap(), p);
        }
    }
}
