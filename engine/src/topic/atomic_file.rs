//! Small control-path files replaced atomically and durably, and read with a size bound.
//!
//! These are synchronous `std::fs` calls, not io_uring: they run on the control path
//! (startup, CreateTopics, DeleteTopics, AlterConfigs), rarely and off every shard's hot
//! path, and a plain blocking call is the simplest thing that is obviously right.
//!
//! Invariant kept by [`replace`]: at every instant, including after a crash at any point,
//! the file at `path` holds either its complete old content or its complete new content.
//! The new bytes go to `{path}.tmp`, which is fsynced, then renamed over `path`, and then
//! the directory is fsynced so the rename itself is durable. A `.tmp` file found later is
//! the remains of an interrupted replace and is never read.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{MetadataError, TopicError};

/// Appended to a file's name to name the temporary file of its replacement.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// A failed [`replace`]: the error, and whether the rename had already happened (then the
/// file may hold either content, and only a reopen can tell which).
#[derive(Debug)]
pub(crate) struct ReplaceFailure {
    pub(crate) error: TopicError,
    pub(crate) renamed: bool,
}

/// The temporary file [`replace`] writes before renaming it over `path`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TopicError + 'a {
    move |source| TopicError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Replaces the content of `path` with `bytes`; see the module documentation.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> Result<(), ReplaceFailure> {
    let tmp = tmp_path(path);
    let before_rename = |error| ReplaceFailure {
        error,
        renamed: false,
    };
    write_synced(&tmp, bytes).map_err(before_rename)?;
    fs::rename(&tmp, path)
        .map_err(io_error("renaming the temporary file over", path))
        .map_err(before_rename)?;
    sync_dir(parent_dir(path)).map_err(|error| ReplaceFailure {
        error,
        renamed: true,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TopicError> {
    let mut file = File::create(path).map_err(io_error("creating", path))?;
    file.write_all(bytes).map_err(io_error("writing", path))?;
    file.sync_all().map_err(io_error("fsyncing", path))
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), TopicError> {
    File::open(dir)
        .and_then(|dir_file| dir_file.sync_all())
        .map_err(io_error("fsyncing directory", dir))
}

/// The whole content of `path`, or `None` if it does not exist. A file larger than
/// `len_max` bytes is damage, not metadata, and is refused as corrupt.
pub(crate) fn read_bounded(path: &Path, len_max: u64) -> Result<Option<Vec<u8>>, TopicError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("opening", path)(error)),
    };
    let mut bytes = Vec::new();
    // Reading one byte past the limit tells "exactly at the limit" from "over it" without
    // trusting a length from metadata that could change under us.
    file.take(len_max + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("reading", path))?;
    let len = bytes.len() as u64;
    if len > len_max {
        let source = MetadataError::TooLarge { len, max: len_max };
        return Err(TopicError::corrupt(path, source));
    }
    Ok(Some(bytes))
}

/// Removes the file at `path` if there is one.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), TopicError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(io_error("removing", path)(error))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_swaps_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        replace(&path, b"old").unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!tmp_path(&path).exists());
        assert_eq!(tmp_path(&path), dir.path().join("f.json.tmp"));
    }

    #[test]
    fn a_failed_write_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        replace(&path, b"old").unwrap();
        // A directory where the temporary file should go makes creating it fail.
        fs::create_dir(tmp_path(&path)).unwrap();
        let failure = replace(&path, b"new").unwrap_err();
        assert!(!failure.renamed);
        assert!(matches!(
            failure.error,
            TopicError::Io { op: "creating", .. }
        ));
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn read_bounded_tells_missing_fitting_and_oversized_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(read_bounded(&path, 4).unwrap().is_none());
        fs::write(&path, b"1234").unwrap();
        assert_eq!(read_bounded(&path, 4).unwrap(), Some(b"1234".to_vec()));
        let error = read_bounded(&path, 3).unwrap_err();
        assert!(
            matches!(
                &error,
                TopicError::CorruptMetadata { path: p, source }
                    if *p == path && matches!(**source, MetadataError::TooLarge { len: 4, max: 3 })
            ),
            "{error:?}"
        );
    }

    #[test]
    fn remove_if_exists_ignores_only_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        remove_if_exists(&path).unwrap();
        fs::write(&path, b"x").unwrap();
        remove_if_exists(&path).unwrap();
        assert!(!path.exists());
        fs::create_dir(&path).unwrap();
        assert!(matches!(
            remove_if_exists(&path),
            Err(TopicError::Io { op: "removing", .. })
        ));
    }
}
