//! Git LFS pointer files, spec v1.

use std::fmt;

use super::LfsError;

const VERSION_URL: &str = "https://git-lfs.github.com/spec/v1";
/// Pointer files are small: Git and git-lfs never take a blob above this size for a pointer.
pub const MAX_POINTER: usize = 1024;

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

/// A parsed pointer: oid, size, and any extension keys (kept, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfsPointer {
    /// The object id.
    pub oid: Oid,
    /// The object's size in bytes.
    pub size: u64,
    /// Other `key value` lines, kept so that a pointer round-trips.
    pub extra: Vec<(String, String)>,
}

impl LfsPointer {
    /// A pointer to an object.
    pub fn new(oid: Oid, size: u64) -> Self {
        LfsPointer {
            oid,
            size,
            extra: Vec::new(),
        }
    }

    /// The canonical text, as git-lfs writes it: version first, then the other keys sorted.
    pub fn encode(&self) -> String {
        let mut lines: Vec<(String, String)> = self.extra.clone();
        lines.push(("oid".into(), format!("sha256:{}", self.oid)));
        lines.push(("size".into(), self.size.to_string()));
        lines.sort();
        let mut out = format!("version {VERSION_URL}\n");
        for (k, v) in lines {
            out.push_str(&k);
            out.push(' ');
            out.push_str(&v);
            out.push('\n');
        }
        out
    }

    /// Parses pointer text. Accepts what the spec accepts (the version line first, the other
    /// keys in sorted order, extension keys) and rejects everything else.
    pub fn parse(bytes: &[u8]) -> Result<LfsPointer, LfsError> {
        let bad = |m: &str| LfsError::BadPointer(m.to_string());
        if bytes.len() > MAX_POINTER {
            return Err(bad("larger than any pointer file"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        if !text.ends_with('\n') {
            return Err(bad("the last line does not end with a newline"));
        }
        // Lines end in LF alone (`str::lines` would also take CRLF, which the spec does not).
        let mut lines = text[..text.len() - 1].split('\n');
        match lines.next() {
            Some(line) if line == format!("version {VERSION_URL}") => {}
            _ => {
                return Err(bad(
                    "the first line is not `version https://git-lfs.github.com/spec/v1`",
                ))
            }
        }
        let (mut oid, mut size, mut extra) = (None, None, Vec::new());
        let mut previous: Option<&str> = None;
        for line in lines {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| bad("a line without `key value`"))?;
            let key_ok = !key.is_empty()
                && key.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !key_ok {
                return Err(LfsError::BadPointer(format!("invalid key {key:?}")));
            }
            if previous.is_some_and(|p| p >= key) {
                return Err(bad("keys are not in sorted order"));
            }
            previous = Some(key);
            match key {
                "oid" => {
                    let hex = value
                        .strip_prefix("sha256:")
                        .ok_or_else(|| bad("the oid is not `sha256:`"))?;
                    oid = Some(Oid::parse(hex)?);
                }
                "size" => {
                    let digits_ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                    size = Some(
                        value
                            .parse::<u64>()
                            .ok()
                            .filter(|_| digits_ok)
                            .ok_or_else(|| {
                                LfsError::BadPointer(format!("invalid size {value:?}"))
                            })?,
                    );
                }
                _ => extra.push((key.to_string(), value.to_string())),
            }
        }
        Ok(LfsPointer {
            oid: oid.ok_or_else(|| bad("no oid line"))?,
            size: size.ok_or_else(|| bad("no size line"))?,
            extra,
        })
    }
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
    fn keeps_extension_keys() {
        let text = format!("version https://git-lfs.github.com/spec/v1\next-0-foo sha256:{OID}\noid sha256:{OID}\nsize 1\n");
        let p = LfsPointer::parse(text.as_bytes()).unwrap();
        assert_eq!(p.extra.len(), 1);
        assert_eq!(p.encode(), text);
    }

    #[test]
    fn rejects_malformed_pointers() {
        let good =
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 1\n");
        for bad in [
            good.replace("size 1\n", "size 1"),
            good.replace("size 1", "size -1"),
            good.replace("size 1", "size 1x"),
            good.replace("sha256:", "md5:"),
            good.replace(OID, &OID.to_uppercase()),
            good.replace(OID, "../../etc/passwd"),
            good.replace("v1", "v2"),
            format!("version https://git-lfs.github.com/spec/v1\nsize 1\noid sha256:{OID}\n"),
            "version https://git-lfs.github.com/spec/v1\nsize 1\n".into(),
        ] {
            assert!(
                LfsPointer::parse(bad.as_bytes()).is_err(),
                "accepted {bad:?}"
            );
        }
        assert!(Oid::parse(&OID[..63]).is_err());
    }
}

/// Fuzzing by property (`PROPTEST_CASES` sets the run length): the parser never panics, what
/// it accepts re-encodes to text it accepts as the same pointer, and encoded pointers parse.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            if let Ok(p) = LfsPointer::parse(&bytes) {
                prop_assert_eq!(LfsPointer::parse(p.encode().as_bytes()).unwrap(), p);
            }
        }

        #[test]
        fn pointer_like_text_never_panics(
            lines in proptest::collection::vec("(oid sha256:[0-9a-f]{60,66}|size [0-9]{0,21}|[a-z.-]{0,6} [ -~]{0,20}|[ -~]{0,30}|\r)", 0..5),
        ) {
            let mut text = format!("version {VERSION_URL}\n");
            for l in &lines {
                text.push_str(l);
                text.push('\n');
            }
            if let Ok(p) = LfsPointer::parse(text.as_bytes()) {
                prop_assert_eq!(LfsPointer::parse(p.encode().as_bytes()).unwrap(), p);
            }
        }

        #[test]
        fn encoded_pointers_round_trip(
            digest in proptest::collection::vec(any::<u8>(), 32),
            size in any::<u64>(),
            ext in proptest::collection::btree_map("ext-[0-9]-[a-z]{1,8}", "[a-z0-9:]{1,20}", 0..3),
        ) {
            let mut p = LfsPointer::new(Oid::from_digest(&digest), size);
            p.extra = ext.into_iter().collect();
            let text = p.encode();
            prop_assert_eq!(LfsPointer::parse(text.as_bytes()).unwrap(), p);
        }
    }
}
