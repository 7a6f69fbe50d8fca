//! The on-disk cubin cache. One file per specialisation, named by the kernel symbol and a
//! SHA-256 key over everything that changes the compiled code (source, arch, NVRTC version,
//! flags). Files carry a digest of their payload, so a torn or corrupt entry is detected and
//! recompiled. Writes go to a unique temporary file renamed into place: readers see a whole
//! entry or none, and processes compiling the same kernel at once each rename an identical
//! file over the other's.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bump when the entry layout or the rendering of sources changes meaning.
const MAGIC: &[u8; 16] = b"zmlx_rs cubin 1\n";
const DIGEST_LEN: usize = 32;

/// How an entry was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Read from disk, digest verified.
    Hit,
    /// Not on disk: compiled and written.
    Miss,
    /// On disk but unreadable or corrupt: recompiled and rewritten.
    Corrupt,
    /// No cache directory: compiled, not written.
    Disabled,
}

impl CacheOutcome {
    pub fn name(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Corrupt => "corrupt",
            CacheOutcome::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: PathBuf,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Backend(format!(
        "kernel cache: cannot {what} {}: {e}",
        path.display()
    ))
}

impl KernelCache {
    pub fn new(dir: PathBuf) -> KernelCache {
        KernelCache { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry's path for a kernel symbol, its source and the flags that shaped it.
    pub fn entry_path(&self, symbol: &str, source: &str, key_flags: &[String]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(MAGIC);
        h.update(source.as_bytes());
        for f in key_flags {
            h.update([0u8]);
            h.update(f.as_bytes());
        }
        let key: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(format!("{symbol}-{key}.cubin"))
    }

    /// The cached cubin, or `build()`'s, written for next time. A failed write costs the next
    /// process a compile, not this one its kernel: it is ignored.
    pub fn get_or_insert(
        &self,
        symbol: &str,
        source: &str,
        key_flags: &[String],
        build: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<(Vec<u8>, CacheOutcome)> {
        let path = self.entry_path(symbol, source, key_flags);
        let outcome = match fs::read(&path) {
            Ok(bytes) => match decode(&bytes) {
                Some(payload) => return Ok((payload.to_vec(), CacheOutcome::Hit)),
                None => CacheOutcome::Corrupt,
            },
            Err(_) => CacheOutcome::Miss,
        };
        let cubin = build()?;
        let _ = self.write(&path, &cubin);
        Ok((cubin, outcome))
    }

    /// Writes an entry atomically: a temporary file unique to this process and call, synced,
    /// then renamed over `path`.
    pub fn write(&self, path: &Path, payload: &[u8]) -> Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(&self.dir).map_err(|e| io_error("create", &self.dir, e))?;
        let tmp = path.with_extension(format!(
            "tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&Sha256::digest(payload))?;
            f.write_all(payload)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_error("write", path, e)
        })
    }
}

/// The payload of a well-formed entry; `None` for anything torn or tampered with.
fn decode(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < DIGEST_LEN {
        return None;
    }
    let (digest, payload) = rest.split_at(DIGEST_LEN);
    (!payload.is_empty() && Sha256::digest(payload).as_slice() == digest).then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn flags() -> Vec<String> {
        vec!["sm_90a".into(), "nvrtc 13.0".into()]
    }

    #[test]
    fn miss_then_hit_and_keys_separate_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path().join("kernels"));
        let builds = AtomicUsize::new(0);
        let build = || {
            builds.fetch_add(1, Ordering::SeqCst);
            Ok(b"cubin bytes".to_vec())
        };
        let (a, o) = cache.get_or_insert("k", "src", &flags(), build).unwrap();
        assert_eq!((a.as_slice(), o), (&b"cubin bytes"[..], CacheOutcome::Miss));
        let (b, o) = cache.get_or_insert("k", "src", &flags(), build).unwrap();
        assert_eq!((b.as_slice(), o), (&b"cubin bytes"[..], CacheOutcome::Hit));
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        let other_arch = vec!["sm_100a".to_string(), "nvrtc 13.0".into()];
        assert_ne!(
            cache.entry_path("k", "src", &flags()),
            cache.entry_path("k", "src", &other_arch)
        );
        assert_ne!(
            cache.entry_path("k", "src", &flags()),
            cache.entry_path("k", "src2", &flags())
        );
    }

    #[test]
    fn corrupt_and_truncated_entries_are_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path().to_path_buf());
        let path = cache.entry_path("k", "src", &flags());
        cache
            .get_or_insert("k", "src", &flags(), || Ok(vec![7; 100]))
            .unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let (got, o) = cache
            .get_or_insert("k", "src", &flags(), || Ok(vec![7; 100]))
            .unwrap();
        assert_eq!((got, o), (vec![7; 100], CacheOutcome::Corrupt));
        // Rewritten whole: the next read hits.
        let (_, o) = cache
            .get_or_insert("k", "src", &flags(), || unreachable!())
            .unwrap();
        assert_eq!(o, CacheOutcome::Hit);
        fs::write(&path, &bytes[..20]).unwrap();
        let (_, o) = cache
            .get_or_insert("k", "src", &flags(), || Ok(vec![7; 100]))
            .unwrap();
        assert_eq!(o, CacheOutcome::Corrupt);
    }

    #[test]
    fn failed_builds_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path().to_path_buf());
        let e = cache
            .get_or_insert("k", "src", &flags(), || {
                Err(Error::Backend("syntax".into()))
            })
            .unwrap_err();
        assert_eq!(e, Error::Backend("syntax".into()));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_writers_leave_one_whole_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(KernelCache::new(dir.path().to_path_buf()));
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, payload) = (cache.clone(), payload.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let (got, _) = cache
                            .get_or_insert("k", "src", &flags(), || Ok(payload.clone()))
                            .unwrap();
                        assert_eq!(got, payload);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary files left behind: {names:?}");
    }
}
