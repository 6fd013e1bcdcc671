//! `dir:PATH` — a channel on a local (or shared network) directory, one file per key.
//!
//! Writes go to a hidden temp file in the target directory and are renamed into place, so a
//! reader sees a whole value or none. File I/O is done directly on the calling thread: a
//! local file operation takes microseconds, far less than handing it to a blocking pool.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::meter::{self, Op};
use super::{Channel, ChannelError, PollPolicy};

/// A channel backed by a directory tree.
#[derive(Debug)]
pub struct DirChannel {
    root: PathBuf,
    url: String,
}

/// Numbers this process's temp files. Process-wide, not per handle: handles opened separately
/// in one process (each thread of the channel bench, each test writer) would otherwise count
/// from the same zero, write the same temp file and rename each other's half-written values.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// What separates a temp file's key name from its writer's tag: `.{name}.tmp-{pid}-...`,
/// written by `write_atomically` and read back to find a killed writer's orphans.
const TEMP_MARK: &str = ".tmp-";

/// A random tag for this process's temp files: on a directory shared over the network, two
/// machines can run processes with the same id.
fn process_tag() -> u64 {
    static TAG: OnceLock<u64> = OnceLock::new();
    *TAG.get_or_init(rand::random)
}

impl DirChannel {
    /// A channel rooted at `root`; `url` names it in messages. Nothing is touched until the
    /// first operation.
    pub fn new(root: impl Into<PathBuf>, url: &str) -> Self {
        DirChannel {
            root: root.into(),
            url: url.to_string(),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, op: &'static str, key: &str, e: std::io::Error) -> ChannelError {
        ChannelError::Backend {
            channel: self.url.clone(),
            op,
            key: key.to_string(),
            source: Box::new(e),
        }
    }

    fn write_atomically(&self, path: &Path, value: &[u8]) -> std::io::Result<()> {
        let parent = path.parent().expect("keys have a parent (the root)");
        let name = path
            .file_name()
            .expect("keys have a file name")
            .to_string_lossy();
        let tmp = parent.join(format!(
            ".{name}{TEMP_MARK}{}-{:x}-{}",
            std::process::id(),
            process_tag(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, value)?;
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Removes now-empty directories from `dir` up to (not including) the root, so a finished
    /// job leaves no trace. Stops at the first directory that is not empty.
    fn prune_empty_dirs(&self, mut dir: &Path) {
        while dir != self.root && dir.starts_with(&self.root) {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
    }

    /// Removes the temp files of the keys `names` in `dir`, and every temp file there once no
    /// key is left in it. A writer killed between its write and its rename (a SIGKILLed
    /// Lambda instance) leaves one behind, and nobody else would ever remove it; its key may
    /// never have been written whole, so the name alone does not find it. A live writer that
    /// loses its temp file this way finds the rename failing with `NotFound` and writes
    /// again, as it would had the delete come first. Best effort, as pruning is.
    fn remove_orphaned_temp_files(&self, dir: &Path, names: &[String]) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut temps = Vec::new();
        let mut keys_left = false;
        for entry in entries.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            let Some((key, _)) = file
                .strip_prefix('.')
                .and_then(|f| f.rsplit_once(TEMP_MARK))
            else {
                keys_left = true;
                continue;
            };
            if names.iter().any(|n| n == key) {
                let _ = std::fs::remove_file(entry.path());
            } else {
                temps.push(entry.path());
            }
        }
        if !keys_left {
            for t in temps {
                let _ = std::fs::remove_file(t);
            }
        }
    }

    fn walk(&self, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue; // in-flight temp files
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                self.walk(&path, out)?;
            } else if let Ok(rel) = path.strip_prefix(&self.root) {
                out.push(
                    rel.to_string_lossy()
                        .replace(std::path::MAIN_SEPARATOR, "/"),
                );
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Channel for DirChannel {
    fn url(&self) -> &str {
        &self.url
    }

    fn poll_policy(&self) -> PollPolicy {
        PollPolicy {
            initial: Duration::from_micros(50),
            max: Duration::from_millis(2),
        }
    }

    fn reads_are_cheap(&self) -> bool {
        true
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError> {
        meter::record(Op::Put, 1, value.len() as u64);
        let path = self.root.join(key);
        let parent = path.parent().expect("joined path has a parent");
        // A concurrent delete may prune the directory between create and write: retry.
        let mut attempt = 0;
        loop {
            match self.write_atomically(&path, &value) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < 5 => {
                    attempt += 1;
                    std::fs::create_dir_all(parent).map_err(|e| self.err("put", key, e))?;
                }
                Err(e) => return Err(self.err("put", key, e)),
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError> {
        match std::fs::read(self.root.join(key)) {
            Ok(v) => {
                meter::record(Op::Get, 1, v.len() as u64);
                Ok(Some(Bytes::from(v)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                meter::record(Op::Get, 1, 0);
                Ok(None)
            }
            Err(e) => Err(self.err("get", key, e)),
        }
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError> {
        meter::record(Op::Delete, keys.len() as u64, 0);
        // Each parent directory with the file names deleted in it.
        let mut parents: Vec<(PathBuf, Vec<String>)> = Vec::new();
        for key in keys {
            let path = self.root.join(key);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(self.err("delete", key, e)),
            }
            let (Some(p), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let name = name.to_string_lossy().into_owned();
            match parents.iter_mut().find(|(q, _)| q == p) {
                Some((_, names)) => names.push(name),
                None => parents.push((p.to_path_buf(), vec![name])),
            }
        }
        for (p, names) in parents {
            self.remove_orphaned_temp_files(&p, &names);
            self.prune_empty_dirs(&p);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        let base = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        meter::record(Op::List, 1, 0);
        let mut keys = Vec::new();
        self.walk(&base, &mut keys)
            .map_err(|e| self.err("list", prefix, e))?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(Some(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handles opened separately in one process (as the channel bench and tests open them)
    /// must not share temp file names, or one writer renames another's half-written file.
    #[test]
    fn separate_handles_in_one_process_never_tear_a_value() {
        let root = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8u8)
            .map(|w| {
                let root = root.path().to_path_buf();
                std::thread::spawn(move || {
                    let ch = DirChannel::new(root, "dir:test");
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    for _ in 0..500 {
                        let value = Bytes::from(vec![w; 20_000 + usize::from(w) * 1_000]);
                        rt.block_on(ch.put("job/shared", value)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let ch = DirChannel::new(root.path(), "dir:test");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(ch.get("job/shared")).unwrap().unwrap();
        let w = got[0];
        assert_eq!(got.len(), 20_000 + usize::from(w) * 1_000, "torn write");
        assert!(got.iter().all(|&b| b == w), "torn write");
        let left: Vec<_> = std::fs::read_dir(root.path().join("job"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("shared")],
            "temp files left"
        );
    }

    /// A writer killed between writing its temp file and renaming it (a SIGKILLed Lambda
    /// instance) leaves the temp file behind; deleting the key must take it too, or the job's
    /// cleanup leaves litter and the directory is never pruned.
    #[test]
    fn deleting_a_key_removes_the_temp_file_of_a_writer_killed_mid_write() {
        let root = tempfile::tempdir().unwrap();
        let ch = DirChannel::new(root.path(), "dir:test");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for key in ["job/r/7", "job/r/9"] {
            rt.block_on(ch.put(key, Bytes::from_static(b"whole")))
                .unwrap();
        }
        let orphan = root.path().join("job/r/.7.tmp-4242-abc-9");
        std::fs::write(&orphan, b"half").unwrap();
        let other = root.path().join("job/r/.70.tmp-4242-abc-10");
        std::fs::write(&other, b"someone else's").unwrap();
        rt.block_on(ch.delete(&["job/r/7".to_string()])).unwrap();
        assert!(!orphan.exists(), "the deleted key's temp file is left");
        assert!(
            other.exists(),
            "a temp file of another key was taken while keys remain"
        );
        // That writer's key was never written whole: the last delete in the directory takes
        // its temp file all the same.
        rt.block_on(ch.delete(&["job/r/9".to_string()])).unwrap();
        assert!(
            !other.exists(),
            "an orphan outlived the directory's last key"
        );
        assert!(!root.path().join("job").exists(), "directories not pruned");
    }
}
