//! host-local's on-disk state, byte-compatible with the Go plugin in both directions:
//! `<dataDir>/<network>/<ip>` holding `<container id>\r\n<ifname>` (no newline, mode
//! 0600), `last_reserved_ip.<range set index>`, and `lock`, an empty file that both
//! implementations `flock(2)` (std's `File::lock`/`try_lock` make exactly that call).
//!
//! Improvements that Go readers never notice:
//! - a reservation appears atomically with its content (written to a temp file, then
//!   `link(2)`ed to its name, which fails if the name exists), so a crash can never leave
//!   an empty, unreleasable reservation file. Temp files of killed writers are reclaimed
//!   (see [`Locked`]);
//! - the lock is waited for at most [`LOCK_TIMEOUT`], then the call fails with code 11
//!   (try again later) instead of hanging behind a stuck holder;
//! - an index under `.cnibox-index/` maps each reservation content (`id\r\nifname`, or a
//!   legacy bare id) to its addresses, so ADD, DEL and CHECK cost the same whatever the
//!   number of reservations. Its entries hold JSON, which never equals a reservation's
//!   content, so Go's content-matching scan ignores them.
//!
//! When the index can be trusted: `.cnibox-index/stamp` records the network directory's
//! identity and mtime as we left it. After our own changes we set that mtime to a
//! *sentinel*, a time one second in the past. Any later change of the directory's entries
//! by anyone (Go reserving or releasing, a runtime deleting files, a crashed writer's
//! temp file) makes the kernel stamp the directory with the current time, which can
//! never equal the sentinel (unless the clock is stepped back by a second to the same
//! nanosecond), and this holds whatever the filesystem's timestamp granularity. (Our
//! own change and a foreign one in the same clock tick would share a timestamp, which is
//! why the stamp does not simply record the mtime our changes produced.) A stamp that
//! does not match sends the operation through the reference's full scan, which also
//! brings the index up to date and writes a new stamp. Every change we make starts by
//! removing the stamp, so a writer killed at any point leaves an untrusted index.
//!
//! Reservation files are only ever created and removed, never rewritten (by Go or by
//! us), so entry changes are all the index has to follow. Subdirectories, or reservation
//! names that are not an address's canonical text, cannot be indexed by address: such a
//! directory is always scanned.

use crate::error::{cni_err, Code};
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha512};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, FileTimes, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const INDEX_DIR: &str = ".cnibox-index";
const STAMP: &str = "stamp";
/// Temp files: `.tmp-r-<ip>-<pid>-<token>` (a reservation being written) and
/// `.tmp-w-<pid>-<token>` (a file being replaced), in the directory of their target.
const TMP_RESERVE: &str = ".tmp-r-";
const TMP_WRITE: &str = ".tmp-w-";

/// How long an operation waits for the network's lock. Holders keep it for
/// milliseconds (Go's scan of thousands of files: tens of ms), so five seconds means
/// the holder is stuck (stopped, or hung on storage); the runtime gets code 11 and
/// retries, instead of a plugin that never returns.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Store {
    dir: PathBuf,
    lock: File,
}

impl Store {
    /// Open (creating as needed) `<data_dir>/<network>` and its lock file.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0'])
        {
            bail!(
                "invalid network name {network:?}: it names a directory under {}",
                data_dir.display()
            );
        }
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        // Go creates it 0750 (and never writes it); flock works on any open file.
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o750)
            .open(dir.join("lock"))
            .with_context(|| format!("failed to open the lock file in {}", dir.display()))?;
        Ok(Store { dir, lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Take the lock (waiting at most [`LOCK_TIMEOUT`]) and find out whether the index
    /// can be trusted (else scan, see the module doc).
    pub fn lock(&self) -> Result<Locked<'_>> {
        self.lock_within(LOCK_TIMEOUT)?;
        let mut locked = Locked {
            store: self,
            indexed: false,
            complete: false,
            known: HashMap::new(),
            dirty: HashSet::new(),
            unstamped: false,
            need_stamp: false,
        };
        if !locked.stamp_matches() {
            locked.rescan(false)?;
        } else {
            locked.indexed = true;
        }
        Ok(locked)
    }

    /// Poll `try_lock` (a blocking `flock` cannot be given a deadline without signals,
    /// which an in-process IPAM must not use); the sleeps grow from 100 us to 5 ms, so a
    /// short wait stays short and a long one costs a few hundred wake-ups.
    fn lock_within(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(100);
        loop {
            match self.lock.try_lock() {
                Ok(()) => return Ok(()),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| {
                        format!("failed to lock {}", self.dir.join("lock").display())
                    })
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(cni_err(
                    Code::TryAgainLater,
                    format!(
                        "timed out waiting for the lock {} (held by another process for more than {} s)",
                        self.dir.join("lock").display(),
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

/// A reservation's content as both implementations write it.
pub fn key(id: &str, ifname: &str) -> String {
    format!("{}\r\n{ifname}", id.trim())
}

/// The store while its lock is held. Dropping it brings the index up to date (if it is
/// in use), stamps the directory, and unlocks.
///
/// Temp files of killed writers: every writer makes them only while holding the lock,
/// so a temp file seen by the lock holder belongs to a dead writer. The full scan
/// (taken whenever the stamp does not match, which a killed writer always leaves
/// behind) removes those whose writer PID is gone; GC removes all of them.
pub struct Locked<'a> {
    store: &'a Store,
    /// The index is exact and in use; else the directory is scanned and `known` is
    /// complete.
    indexed: bool,
    /// `known` holds every reservation (a scan was done in this operation).
    complete: bool,
    /// Reservation paths by content: a cache of index entries (indexed) or the whole
    /// scan (not indexed), kept up to date with our own changes.
    known: HashMap<String, Vec<PathBuf>>,
    /// Contents whose index entry must be rewritten.
    dirty: HashSet<String>,
    /// The stamp has been removed by this operation.
    unstamped: bool,
    /// The index was changed or rebuilt: write a new stamp when done.
    need_stamp: bool,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // A failure here loses nothing: without a new stamp the next operation scans.
        if let Err(e) = self.finish() {
            eprintln!("host-local: index not updated (the next call rescans): {e:#}");
        }
        let _ = self.store.lock.unlock();
    }
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(dir: &Path) -> Result<Stamp> {
        let m = fs::metadata(dir).with_context(|| format!("failed to stat {}", dir.display()))?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ifname: Option<String>,
    ips: Vec<IpAddr>,
}

impl Entry {
    fn key(&self) -> String {
        match &self.ifname {
            Some(f) => format!("{}\r\n{f}", self.id),
            None => self.id.clone(),
        }
    }
}

fn entry_name(content: &str) -> String {
    let h = Sha512::digest(content.as_bytes());
    h.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn write_new(path: &Path, content: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

/// `.tmp-<what>-<pid>-<token>`: the PID tells whether the writer is still alive.
fn tmp_name(what: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        ".tmp-{what}-{}-{nanos}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The writer PID of one of our temp file names.
fn tmp_pid(name: &str) -> Option<i32> {
    if !(name.starts_with(TMP_RESERVE) || name.starts_with(TMP_WRITE)) {
        return None;
    }
    let mut parts = name.rsplitn(3, '-');
    let _token = parts.next()?;
    parts.next()?.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // A process exists while its /proc entry does (same answer as kill(pid, 0), with no
    // unsafe code); a zombie still counts, as it would for kill.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Replace `path` atomically with `content` (mode 0600), through a temp file beside it.
fn write_atomic(path: &Path, content: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(tmp_name("w"));
    let written = write_new(&tmp, content).and_then(|()| Ok(fs::rename(&tmp, path)?));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("failed to write {}", path.display()))
}

fn remove(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to release {}", p.display())),
    }
}

fn ip_of(path: &Path) -> Option<IpAddr> {
    path.file_name()?.to_str()?.parse().ok()
}

/// What one walk of the network directory found.
#[derive(Default)]
struct Scan {
    reservations: HashMap<String, Vec<PathBuf>>,
    temps: Vec<(PathBuf, Option<i32>)>,
    /// Something the index cannot describe (a subdirectory, a non-canonical name).
    unindexable: bool,
}

/// The reference's scan: every regular file named like an address, recursively (our
/// index directory aside), keyed by its trimmed content. Files of other kinds (FIFOs,
/// sockets, symlinks) are never opened.
fn walk(dir: &Path, top: bool, scan: &mut Scan) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", dir.display())),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if !(top && name == INDEX_DIR) {
                scan.unindexable = true;
                walk(&entry.path(), false, scan)?;
            }
            continue;
        }
        if !ft.is_file() {
            continue;
        }
        if name.starts_with(TMP_RESERVE) || name.starts_with(TMP_WRITE) {
            scan.temps.push((entry.path(), tmp_pid(&name)));
            continue;
        }
        let Ok(ip) = name.parse::<IpAddr>() else {
            continue;
        };
        let Ok(content) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let content = content.trim();
        if content.is_empty() {
            continue;
        }
        if !top || ip.to_string() != name {
            scan.unindexable = true;
        }
        scan.reservations
            .entry(content.to_string())
            .or_default()
            .push(entry.path());
    }
    Ok(())
}

impl Locked<'_> {
    fn dir(&self) -> &Path {
        &self.store.dir
    }

    fn index_dir(&self) -> PathBuf {
        self.dir().join(INDEX_DIR)
    }

    /// Whether the index is in use (tests and diagnostics).
    pub fn indexed(&self) -> bool {
        self.indexed
    }

    fn stamp_matches(&self) -> bool {
        let Ok(s) = fs::read_to_string(self.index_dir().join(STAMP)) else {
            return false;
        };
        let Ok(recorded) = serde_json::from_str::<Stamp>(&s) else {
            return false;
        };
        Stamp::of(self.dir()).is_ok_and(|now| now == recorded)
    }

    /// Before our first change: from now until the new stamp, the index is untrusted.
    fn unstamp(&mut self) -> Result<()> {
        if !self.unstamped {
            remove(&self.index_dir().join(STAMP))?;
            self.unstamped = true;
        }
        Ok(())
    }

    /// The full scan: reclaim dead writers' temp files (all of them for GC), then rebuild
    /// the index from what is on disk (rewriting only entries that differ) or, if the
    /// directory cannot be indexed, keep the scan as the view.
    fn rescan(&mut self, all_temps: bool) -> Result<()> {
        self.unstamp()?;
        let mut scan = Scan::default();
        walk(self.dir(), true, &mut scan)?;
        let idx = self.index_dir();
        let rd = match fs::read_dir(&idx) {
            Ok(rd) => Some(rd),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", idx.display())),
        };
        let mut entries: HashMap<String, PathBuf> = HashMap::new();
        for e in rd.into_iter().flatten() {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_RESERVE) || name.starts_with(TMP_WRITE) {
                scan.temps.push((e.path(), tmp_pid(&name)));
            } else if name != STAMP {
                entries.insert(name, e.path());
            }
        }
        for (path, pid) in &scan.temps {
            if all_temps || pid.is_some_and(|p| !pid_alive(p)) {
                let _ = fs::remove_file(path);
            }
        }
        self.known = scan.reservations;
        self.complete = true;
        self.dirty.clear();
        if scan.unindexable {
            self.indexed = false;
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&idx)
            .with_context(|| format!("failed to create {}", idx.display()))?;
        let mut keep = HashSet::new();
        for (content, paths) in &self.known {
            let name = entry_name(content);
            let want = sorted_ips(paths);
            let current = entries
                .get(&name)
                .and_then(|p| fs::read_to_string(p).ok())
                .and_then(|s| serde_json::from_str::<Entry>(&s).ok());
            if !current.is_some_and(|e| e.key() == *content && e.ips == want) {
                self.dirty.insert(content.clone());
            }
            keep.insert(name);
        }
        for (name, path) in &entries {
            if !keep.contains(name) {
                remove(path)?;
            }
        }
        self.indexed = true;
        self.need_stamp = true;
        Ok(())
    }

    /// The reservation files holding `content`.
    fn lookup(&mut self, content: &str) -> Result<Vec<PathBuf>> {
        if let Some(v) = self.known.get(content) {
            return Ok(v.clone());
        }
        if self.complete || !self.indexed {
            return Ok(vec![]);
        }
        let p = self.index_dir().join(entry_name(content));
        let paths = match fs::read_to_string(&p) {
            Err(e) if e.kind() == ErrorKind::NotFound => vec![],
            read => {
                let entry = read
                    .ok()
                    .and_then(|s| serde_json::from_str::<Entry>(&s).ok())
                    .filter(|e| e.key() == content);
                match entry {
                    Some(e) => e
                        .ips
                        .iter()
                        .map(|ip| self.dir().join(ip.to_string()))
                        .collect(),
                    None => {
                        // Damaged or colliding entry: trust the disk instead.
                        self.rescan(false)?;
                        return self.lookup(content);
                    }
                }
            }
        };
        self.known.insert(content.to_string(), paths.clone());
        Ok(paths)
    }

    /// Addresses the reference's duplicate check sees for (id, ifname): files holding
    /// `id\r\nifname` or the legacy bare id, named like an address.
    pub fn ips_of(&mut self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut v = self.lookup(&key(id, ifname))?;
        v.extend(self.lookup(id.trim())?);
        Ok(v.iter().filter_map(|p| ip_of(p)).collect())
    }

    /// CHECK's rule: some file holds `id\r\nifname` or the legacy bare id.
    pub fn holds(&mut self, id: &str, ifname: &str) -> Result<bool> {
        Ok(!self.lookup(&key(id, ifname))?.is_empty() || !self.lookup(id.trim())?.is_empty())
    }

    /// Reserve `ip` for the attachment; `Ok(false)` if it is taken.
    pub fn reserve(&mut self, id: &str, ifname: &str, ip: IpAddr, range_id: usize) -> Result<bool> {
        let content = key(id, ifname);
        let mut paths = self.lookup(&content)?;
        self.unstamp()?;
        let name = self.dir().join(ip.to_string());
        let tmp = self.dir().join(tmp_name(&format!("r-{ip}")));
        write_new(&tmp, &content).with_context(|| format!("failed to write {}", tmp.display()))?;
        let linked = fs::hard_link(&tmp, &name);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(e).with_context(|| format!("failed to reserve {}", name.display()))
            }
        }
        paths.push(name);
        self.known.insert(content.clone(), paths);
        self.dirty.insert(content);
        write_atomic(
            &self.dir().join(format!("last_reserved_ip.{range_id}")),
            &ip.to_string(),
        )?;
        Ok(true)
    }

    pub fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
        match fs::read_to_string(self.dir().join(format!("last_reserved_ip.{range_id}"))) {
            Ok(s) => s.trim().parse().ok(),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                eprintln!("Error retrieving last reserved ip: {e}");
                None
            }
        }
    }

    /// The index's files for `content` really hold it (they are never rewritten, so
    /// this only fails if someone edited them in place).
    fn verified(&mut self, content: &str) -> Result<Vec<PathBuf>> {
        let paths = self.lookup(content)?;
        if self.indexed
            && !self.complete
            && !paths.iter().all(|p| {
                fs::read_to_string(p).is_ok_and(|c| c.trim() == content)
                    || fs::symlink_metadata(p).is_err_and(|e| e.kind() == ErrorKind::NotFound)
            })
        {
            self.rescan(false)?;
            return self.lookup(content);
        }
        Ok(paths)
    }

    fn release_content(&mut self, content: &str) -> Result<bool> {
        let paths = self.verified(content)?;
        if paths.is_empty() {
            return Ok(false);
        }
        self.unstamp()?;
        let mut errs = Vec::new();
        let mut left = Vec::new();
        for p in paths {
            if let Err(e) = remove(&p) {
                errs.push(format!("{e:#}"));
                left.push(p);
            }
        }
        self.known.insert(content.to_string(), left);
        self.dirty.insert(content.to_string());
        if !errs.is_empty() {
            return Err(anyhow!("{}", errs.join(";")));
        }
        Ok(true)
    }

    /// Release everything of (id, ifname) with the reference's rules: the exact
    /// content, else the legacy bare id.
    pub fn release(&mut self, id: &str, ifname: &str) -> Result<()> {
        if !self.release_content(&key(id, ifname))? {
            self.release_content(id.trim())?;
        }
        Ok(())
    }

    /// GC: release every reservation whose attachment is not in `valid` (a legacy bare
    /// id is kept while its container has any valid attachment) and every temp file (no
    /// writer can be at work while we hold the lock). Returns how many reservations went.
    pub fn gc(&mut self, valid: &[(String, String)]) -> Result<usize> {
        self.rescan(true)?;
        let mut n = 0;
        let contents: Vec<String> = self.known.keys().cloned().collect();
        for content in contents {
            let keep = match content.split_once("\r\n") {
                Some((id, ifname)) => valid.iter().any(|(c, i)| c == id && i == ifname),
                None => valid.iter().any(|(c, _)| *c == content),
            };
            if !keep {
                n += self.lookup(&content)?.len();
                self.release_content(&content)?;
            }
        }
        Ok(n)
    }

    /// Write the changed index entries and a new stamp. Called on drop.
    fn finish(&mut self) -> Result<()> {
        if !self.indexed || (self.dirty.is_empty() && !self.need_stamp) {
            return Ok(());
        }
        self.unstamp()?;
        let idx = self.index_dir();
        if !self.dirty.is_empty() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&idx)
                .with_context(|| format!("failed to create {}", idx.display()))?;
        }
        for content in std::mem::take(&mut self.dirty) {
            let p = idx.join(entry_name(&content));
            let paths = self.known.get(&content).cloned().unwrap_or_default();
            if paths.is_empty() {
                remove(&p)?;
                continue;
            }
            let (id, ifname) = match content.split_once("\r\n") {
                Some((i, f)) => (i.to_string(), Some(f.to_string())),
                None => (content.clone(), None),
            };
            let e = Entry {
                id,
                ifname,
                ips: sorted_ips(&paths),
            };
            write_atomic(&p, &serde_json::to_string(&e)?)?;
        }
        // The sentinel: see the module doc for why a past time.
        let sentinel = SystemTime::now() - Duration::from_secs(1);
        File::open(self.dir())
            .and_then(|d| d.set_times(FileTimes::new().set_modified(sentinel)))
            .with_context(|| format!("failed to set the mtime of {}", self.dir().display()))?;
        let stamp = Stamp::of(self.dir())?;
        write_atomic(&idx.join(STAMP), &serde_json::to_string(&stamp)?)?;
        self.need_stamp = false;
        self.unstamped = false;
        Ok(())
    }
}

fn sorted_ips(paths: &[PathBuf]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = paths.iter().filter_map(|p| ip_of(p)).collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cbx-st-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn temp_names_carry_the_pid() {
        let n = tmp_name("r-10.1.2.3");
        assert!(n.starts_with(".tmp-r-10.1.2.3-"), "{n}");
        assert_eq!(tmp_pid(&n), Some(std::process::id() as i32));
        assert_eq!(tmp_pid(&tmp_name("w")), Some(std::process::id() as i32));
        assert_eq!(tmp_pid(".tmp-r-2001:db8::1-77-12x0"), Some(77));
        assert_eq!(tmp_pid("10.1.2.3"), None);
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
    }

    #[test]
    fn stamp_follows_foreign_changes() {
        let d = tmpdir("stamp");
        let store = Store::open(&d, "net").unwrap();
        {
            let mut l = store.lock().unwrap();
            assert!(l
                .reserve("c1", "eth0", "10.1.2.2".parse().unwrap(), 0)
                .unwrap());
        }
        assert!(store.lock().unwrap().stamp_matches());
        // A change in the same clock tick as ours is still seen.
        fs::write(d.join("net/10.1.2.3"), "go\r\neth0").unwrap();
        let mut l = store.lock().unwrap();
        assert!(l.unstamped, "a foreign file must invalidate the stamp");
        assert_eq!(
            l.ips_of("go", "eth0").unwrap(),
            vec!["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        drop(l);
        assert!(store.lock().unwrap().stamp_matches());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn subdirectories_are_scanned_not_indexed() {
        let d = tmpdir("subdir");
        let store = Store::open(&d, "net").unwrap();
        fs::create_dir_all(d.join("net/old")).unwrap();
        fs::write(d.join("net/old/10.1.2.7"), "c1\r\neth0").unwrap();
        let mut l = store.lock().unwrap();
        assert!(!l.indexed());
        assert_eq!(l.ips_of("c1", "eth0").unwrap().len(), 1);
        l.release("c1", "eth0").unwrap();
        drop(l);
        assert!(!d.join("net/old/10.1.2.7").exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn lock_wait_is_bounded() {
        let d = tmpdir("lockwait");
        let a = Store::open(&d, "net").unwrap();
        let b = Store::open(&d, "net").unwrap();
        let held = a.lock().unwrap();
        let t = Instant::now();
        let e = b.lock_within(Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(200));
        let c = crate::error::CniError::from_anyhow(&e);
        assert_eq!(c.code, 11);
        assert!(
            c.msg.starts_with("timed out waiting for the lock "),
            "{}",
            c.msg
        );
        drop(held);
        b.lock_within(Duration::from_millis(200)).unwrap();
        let _ = fs::remove_dir_all(&d);
    }
}
