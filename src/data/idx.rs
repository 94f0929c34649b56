//! LeCun's IDX format (MNIST, Fashion-MNIST): big-endian header, then raw values.
//!
//! Magic: two zero bytes, a type code (0x08 = unsigned byte, the only type image data sets
//! use), the number of dimensions; then one big-endian u32 per dimension; then the values.

use super::DataError;
use std::path::Path;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first (examples, rows, columns for images).
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

const UNSIGNED_BYTE: u8 = 0x08;

/// The whole file's size its header (`header`: the magic and every dimension) implies, unless
/// it exceeds 4 GiB (no image data set exp reads comes near).
pub fn file_size(header: &[u8]) -> Option<usize> {
    let rank = *header.get(3)? as usize;
    let dims = header.get(4..4 + 4 * rank)?;
    let values = dims.chunks_exact(4).try_fold(1u64, |acc, c| {
        acc.checked_mul(u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64)
    })?;
    let total = values.checked_add((4 + 4 * rank) as u64)?;
    (total <= 4 << 30).then_some(total as usize)
}

/// Parses IDX bytes (already decompressed); `path` is for messages.
pub fn parse(bytes: &[u8], path: &Path) -> Result<IdxArray, DataError> {
    let corrupt = |message: String| DataError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < 4 {
        return Err(corrupt(format!(
            "{} bytes is too short for an IDX header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(corrupt(format!(
            "bad magic {:02x} {:02x} {:02x} {:02x}: not an IDX file",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    if bytes[2] != UNSIGNED_BYTE {
        return Err(corrupt(format!(
            "value type 0x{:02x} is not supported (only 0x08, unsigned byte)",
            bytes[2]
        )));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(corrupt("zero dimensions".into()));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(corrupt(format!(
            "truncated header: {rank} dimensions need {header} bytes, the file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| corrupt(format!("dimensions {dims:?} overflow")))?;
    let payload = &bytes[header..];
    if payload.len() != expected {
        let what = if payload.len() < expected {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(corrupt(format!(
            "{what}: dimensions {dims:?} need {expected} bytes of data, the file has {}",
            payload.len()
        )));
    }
    Ok(IdxArray {
        dims,
        data: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn parses_images_and_labels() {
        let a = parse(&idx(&[2, 2, 3], &[1; 12]), Path::new("x")).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        let l = parse(&idx(&[3], &[0, 1, 2]), Path::new("x")).unwrap();
        assert_eq!(l.data, vec![0, 1, 2]);
    }

    #[test]
    fn rejects_corrupt_input() {
        let p = Path::new("f");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "too short"),
            (vec![1, 0, 8, 1, 0, 0, 0, 1, 5], "bad magic"),
            (vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 5], "not supported"),
            (vec![0, 0, 8, 0], "zero dimensions"),
            (vec![0, 0, 8, 3, 0, 0], "truncated header"),
            (idx(&[2, 2], &[1, 2, 3]), "truncated"),
            (idx(&[1], &[1, 2]), "trailing"),
            (idx(&[u32::MAX, u32::MAX, u32::MAX], &[]), "overflow"),
        ];
        for (bytes, want) in cases {
            let e = parse(&bytes, p).unwrap_err().to_string();
            assert!(e.contains(want), "{e} does not mention {want}");
        }
    }
}
