//! Staged writes that leave nothing behind, and one writer per run directory.
//!
//! - `Temp`: a temporary beside its target, named `.<target>.tmp-<pid>-<random>` so that two
//!   writers of one output never share it; removed when dropped uncommitted (on an error), and
//!   listed in a process-wide registry that `install_signal_cleanup` empties on SIGINT/SIGTERM.
//! - `sweep_stale`: removes the temporaries of processes that are gone (killed, or a full disk).
//! - `DirLock`: an advisory lock on a directory (a `.lock` file held with `File::try_lock`).
//! - `swap_dir`: puts a staged directory in place of an existing one atomically
//!   (`renameat2(RENAME_EXCHANGE)` on Linux), so there is no moment without the directory.
//!
//! `files::write_atomic` and every stage that writes an output go through here; what to write
//! is theirs.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Live temporaries of this process, removed by the signal handler's thread.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() as u32
}

/// 16 random hex digits (a run's lineage id, for example).
pub fn unique_id() -> String {
    format!("{:08x}{:08x}", random_u32(), random_u32())
}

/// `<dir>/.<name>.tmp-<pid>-<random hex>` for the target `<dir>/<name>`.
pub fn temp_name(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(format!(".{name}.tmp-{}-{:08x}", std::process::id(), random_u32()))
}

/// The pid a temporary name was made by: `….tmp-<pid>-<hex>`, or the older
/// `.tmp-<name>-<pid>` / `.old-<name>-<pid>` of checkpoint folders.
fn owner_pid(name: &str) -> Option<u32> {
    if let Some((_, tail)) = name.rsplit_once(".tmp-").filter(|(head, _)| !head.is_empty()) {
        let (pid, hex) = tail.split_once('-')?;
        return (hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(pid.parse().ok()?);
    }
    if name.starts_with(".tmp-") || name.starts_with(".old-") {
        return name.rsplit_once('-')?.1.parse().ok();
    }
    None
}

#[cfg(unix)]
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // Signal 0 checks existence; EPERM means it exists under another user.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) == 0 };
    exists || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn alive(_pid: u32) -> bool {
    true
}

fn remove_path(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the temporaries in `dir` whose process is gone (only those whose name is `prefix…`
/// when given) and returns what it removed.
pub fn sweep_stale(dir: &Path, prefix: Option<&str>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut removed = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefix.is_some_and(|p| !name.starts_with(p)) {
            continue;
        }
        if owner_pid(&name).is_some_and(|pid| !alive(pid)) && remove_path(&e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// A staged file or folder for `target`: removed on drop unless committed.
#[derive(Debug)]
pub struct Temp {
    path: PathBuf,
    done: bool,
}

impl Temp {
    /// Reserves a temporary name beside `target` (nothing is created) after sweeping the stale
    /// temporaries of earlier writers of the same target.
    pub fn new(target: &Path) -> Temp {
        let path = temp_name(target);
        if let (Some(dir), Some(name)) = (path.parent(), target.file_name()) {
            sweep_stale(dir, Some(&format!(".{}.tmp-", name.to_string_lossy())));
        }
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(path.clone());
        Temp { path, done: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staged file or folder onto `target` (replacing a file; see `swap_dir` for
    /// folders).
    pub fn commit(mut self, target: &Path) -> Result<()> {
        std::fs::rename(&self.path, target)
            .with_context(|| format!("renaming {} to {}", self.path.display(), target.display()))?;
        self.done = true;
        Ok(())
    }

    /// Puts the staged folder in place of `target` (existing or not) without a moment when
    /// `target` is missing; the old folder is then removed.
    pub fn commit_dir(mut self, target: &Path) -> Result<()> {
        swap_dir(&self.path, target)?;
        // After an exchange the temporary name holds the old folder; Drop removes it.
        self.done = !self.path.exists();
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_path(&self.path);
        }
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = live.iter().position(|p| p == &self.path) {
            live.swap_remove(i);
        }
    }
}

/// Moves folder `new` to `target`. When `target` exists the two are exchanged atomically where
/// the filesystem can (Linux `renameat2(RENAME_EXCHANGE)`), so `new` then holds the old folder;
/// elsewhere the old folder is renamed aside first and `new` holds it afterwards as well.
pub fn swap_dir(new: &Path, target: &Path) -> Result<()> {
    if !target.exists() {
        return std::fs::rename(new, target)
            .with_context(|| format!("renaming {} to {}", new.display(), target.display()));
    }
    if exchange(new, target) {
        return Ok(());
    }
    let aside = temp_name(target);
    std::fs::rename(target, &aside).with_context(|| format!("moving old {} aside", target.display()))?;
    std::fs::rename(new, target).with_context(|| format!("renaming {} to {}", new.display(), target.display()))?;
    std::fs::rename(&aside, new).with_context(|| format!("renaming {} to {}", aside.display(), new.display()))
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(a), Ok(b)) =
        (std::ffi::CString::new(a.as_os_str().as_bytes()), std::ffi::CString::new(b.as_os_str().as_bytes()))
    else {
        return false;
    };
    // Through syscall(2): glibc's renameat2 wrapper is newer than some systems smelt runs on.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> bool {
    false
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`, when known.
#[cfg(unix)]
pub fn disk_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(not(unix))]
pub fn disk_free(_dir: &Path) -> Option<u64> {
    None
}

/// An advisory lock on a directory: `<dir>/.lock`, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Takes the lock, or fails at once naming the holder's pid when another process has it.
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let by = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
                bail!("{} is in use by another {what}{by}, which holds {}; wait for it to finish or choose another directory", dir.display(), path.display());
            }
            // A filesystem without locks (some network mounts): say so, and go on unguarded
            // rather than refuse every run there.
            Err(std::fs::TryLockError::Error(e)) => {
                eprintln!(
                    "warning: cannot lock {} ({e}); nothing keeps a second {what} out of {}",
                    path.display(),
                    dir.display()
                );
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(DirLock { _file: file })
    }
}

/// Removes the live temporaries when the process is interrupted (SIGINT, SIGTERM), then dies of
/// the same signal. The handler only writes the signal number to a pipe (async-signal-safe); a
/// thread reading it does the removing. Through `libc`, already in the dependency tree, rather
/// than a signal crate: this is all of it. Call once, early in `main`.
#[cfg(unix)]
pub fn install_signal_cleanup() {
    use std::sync::atomic::{AtomicI32, Ordering};
    static PIPE: AtomicI32 = AtomicI32::new(-1);
    extern "C" fn on_signal(sig: libc::c_int) {
        let fd = PIPE.load(Ordering::Relaxed);
        let b = sig as u8;
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
    if PIPE.load(Ordering::Relaxed) >= 0 {
        return;
    }
    let mut fds = [0 as libc::c_int; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return;
    }
    PIPE.store(fds[1], Ordering::Relaxed);
    let reader = fds[0];
    let spawned = std::thread::Builder::new().name("smelt-signals".into()).spawn(move || {
        let mut b = 0u8;
        loop {
            let n = unsafe { libc::read(reader, (&mut b as *mut u8).cast(), 1) };
            if n == 1 {
                break;
            }
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
        for p in live {
            let _ = remove_path(&p);
        }
        let sig = b as libc::c_int;
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    });
    if spawned.is_ok() {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
    }
}

#[cfg(not(unix))]
pub fn install_signal_cleanup() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let (a, b) = (temp_name(Path::new("d/out.bin")), temp_name(Path::new("d/out.bin")));
        assert_ne!(a, b);
        let n = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(n.starts_with(".out.bin.tmp-"), "{n}");
        assert_eq!(owner_pid(&n), Some(std::process::id()));
        assert_eq!(owner_pid(".tmp-step-000100-4242"), Some(4242));
        assert_eq!(owner_pid("step-000100"), None);
        assert_eq!(owner_pid("notes.tmp-draft"), None);
    }

    #[test]
    fn dropped_temps_vanish_and_dead_ones_are_swept() {
        let d = std::env::temp_dir().join(format!("smelt-staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let t = Temp::new(&d.join("x"));
        std::fs::write(t.path(), b"half").unwrap();
        drop(t);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        // pid 0x7fff_fff0 is not a live process on any test machine.
        std::fs::write(d.join(".x.tmp-2147483632-0badcafe"), b"old").unwrap();
        std::fs::write(d.join("keep.txt"), b"mine").unwrap();
        assert_eq!(sweep_stale(&d, None).len(), 1);
        assert!(d.join("keep.txt").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn swap_dir_replaces_with_no_gap() {
        let d = std::env::temp_dir().join(format!("smelt-swap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("final")).unwrap();
        std::fs::write(d.join("final/v"), b"1").unwrap();
        let t = Temp::new(&d.join("final"));
        std::fs::create_dir_all(t.path()).unwrap();
        std::fs::write(t.path().join("v"), b"2").unwrap();
        t.commit_dir(&d.join("final")).unwrap();
        assert_eq!(std::fs::read(d.join("final/v")).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "the old folder is removed");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_held_lock_is_refused_with_the_holder() {
        let d = std::env::temp_dir().join(format!("smelt-lock-{}", std::process::id()));
        let a = DirLock::acquire(&d, "test").unwrap();
        let e = DirLock::acquire(&d, "test").unwrap_err().to_string();
        assert!(e.contains("in use") && e.contains(&std::process::id().to_string()), "{e}");
        drop(a);
        DirLock::acquire(&d, "test").unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
