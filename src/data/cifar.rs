//! The CIFAR-10 binary version: records of one label byte then 3×32×32 pixel bytes
//! (red plane, green plane, blue plane, each row-major).

use super::DataError;
use std::path::Path;

/// Bytes per CIFAR-10 record.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// CIFAR-10 has ten classes.
pub const CLASSES: usize = 10;

/// Splits a batch file into labels and CHW images; `path` is for messages.
pub fn parse(bytes: &[u8], path: &Path) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let corrupt = |message: String| DataError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(corrupt(format!(
            "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
            bytes.len()
        )));
    }
    let n = bytes.len() / RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut images = Vec::with_capacity(n * (RECORD - 1));
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] as usize >= CLASSES {
            return Err(corrupt(format!(
                "record {i} has label {} (CIFAR-10 labels are 0-9)",
                record[0]
            )));
        }
        labels.push(record[0]);
        images.extend_from_slice(&record[1..]);
    }
    Ok((labels, images))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_partial_records_and_bad_labels() {
        assert!(parse(&[0; RECORD + 1], Path::new("b")).is_err());
        let mut r = vec![0u8; RECORD];
        r[0] = 10;
        assert!(parse(&r, Path::new("b"))
            .unwrap_err()
            .to_string()
            .contains("label 10"));
        let (l, i) = parse(&[3u8; RECORD * 2], Path::new("b")).unwrap();
        assert_eq!(l, vec![3, 3]);
        assert_eq!(i.len(), 2 * 3072);
    }
}
