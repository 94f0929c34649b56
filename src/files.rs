//! Files written whole: the bytes go to a temporary file beside the target, which is then
//! renamed over it, so a reader (or a kill) finds the old file or the new one, never part of
//! one. Run outputs, sweep state, journals and exported models are all written so.

use std::io::Write;
use std::path::Path;

/// The name prefix of the temporary files: what a clean-up after a kill looks for.
pub const TEMP_PREFIX: &str = ".exp-";

/// Writes `bytes` to `path` whole, creating its folder. With `durable`, the bytes are on disk
/// before the file is named (journals: a crash must not leave a named, empty journal). The
/// file's mode is 0666 less the umask, as a plain create gives (tempfile's own is 0600).
pub fn write_whole(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_with_the_umask_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file");
        write_whole(&path, b"one", false).unwrap();
        write_whole(&path, b"two", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let umask = unsafe {
                let old = libc::umask(0);
                libc::umask(old);
                old
            };
            assert_eq!(mode, 0o666 & !(umask as u32));
        }
    }
}
