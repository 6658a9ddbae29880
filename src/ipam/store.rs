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
//!
//! Boot records (`.cnibox-boot/<ip>.boot`): which kernel boot a reservation provably
//! existed in, so that reservations that outlived their containers (every netns died
//! with the old kernel) can be reclaimed when a range is exhausted. See [`BootRecord`]
//! for the record, how it is tied to its reservation file, and why neither Go's DEL nor
//! its GetByID can ever mistake it for a reservation; [`Locked::reclaim_stale`] for the
//! rule. Reservations written by the reference carry no record; the network's own
//! record of custody proves when they predate this boot: the stamp records the boot id
//! it was written in, and a stamp that still matches at the first call of a new boot
//! proves that nobody changed the directory's entries since that earlier boot, so every
//! reservation present then is from an earlier boot (and gets a record, "adopted").
//! Whenever that chain is broken (any foreign change, a crashed writer), reference
//! reservations stay of unknown boot, and only GC or DEL removes them.

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
/// The boot records' directory, and the suffix of a record's name (`<ip>.boot`).
pub const BOOT_DIR: &str = ".cnibox-boot";
const BOOT_SUFFIX: &str = ".boot";
/// The kernel's id of the current boot: a random UUID made at every boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Test-only: another file to read the boot id from, so that tests can simulate a
/// reboot by rewriting it. It moves the source, not the logic.
pub const BOOT_ID_PATH_ENV: &str = "CNIBOX_BOOT_ID_PATH";

/// How long an operation waits for the network's lock. Holders keep it for
/// milliseconds (Go's scan of thousands of files: tens of ms), so five seconds means
/// the holder is stuck (stopped, or hung on storage); the runtime gets code 11 and
/// retries, instead of a plugin that never returns.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Store {
    dir: PathBuf,
    lock: File,
    /// The current boot's id; `None` if it cannot be read (then nothing is recorded and
    /// nothing is reclaimed).
    boot: Option<String>,
}

/// The current boot id, from [`BOOT_ID_PATH`] (or the test-only [`BOOT_ID_PATH_ENV`]).
pub fn current_boot() -> Option<String> {
    let path = std::env::var_os(BOOT_ID_PATH_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BOOT_ID_PATH));
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    // A boot id is a UUID; anything else (an empty or odd file) is no boot id at all.
    (!s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .then(|| s.to_string())
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
        Ok(Store {
            dir,
            lock,
            boot: current_boot(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The boot id this store records and compares with.
    pub fn boot(&self) -> Option<&str> {
        self.boot.as_deref()
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
        match locked.matching_stamp() {
            Some(stamp) => {
                locked.indexed = true;
                locked.boot_transition(stamp.boot)?;
            }
            None => locked.rescan(false)?,
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

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    /// The boot id when the stamp was written (absent in stamps of older versions, or
    /// when the boot id could not be read): a matching stamp of an earlier boot proves
    /// that every entry present predates this boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot: Option<String>,
}

impl Stamp {
    fn of(dir: &Path) -> Result<Stamp> {
        let m = fs::metadata(dir).with_context(|| format!("failed to stat {}", dir.display()))?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            boot: None,
        })
    }

    /// Same directory, same mtime (the boot is what the stamp says about the past).
    fn same_dir(&self, o: &Stamp) -> bool {
        (self.dev, self.ino, self.mtime, self.mtime_nsec) == (o.dev, o.ino, o.mtime, o.mtime_nsec)
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

/// The identity of one reservation file: its inode and its ctime, compared only for
/// equality (like the stamp), never ordered against a clock. Go and we never rewrite a
/// reservation, so the ctime stays what it was when the file got its last link; a file
/// released and made again under the same name, even on a reused inode number, gets a
/// ctime of its own (any write, link or chmod sets it), so a record can never be taken
/// for a different file that merely has the same name and content.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug, Clone)]
struct FileId {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileId {
    /// The identity of the regular file at `p` (not following a symlink).
    fn of(p: &Path) -> Option<FileId> {
        let m = fs::symlink_metadata(p).ok()?;
        m.is_file().then(|| FileId {
            dev: m.dev(),
            ino: m.ino(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        })
    }
}

/// What `.cnibox-boot/<ip>.boot` says about the reservation `<ip>`: during which boot it
/// provably existed. Written by our ADD for its own reservation (the current boot, and
/// the container's netns), or by adoption for a reservation the stamp proved older than
/// the current boot (the stamp's boot, no netns).
///
/// The reference never mistakes it for a reservation: its DEL deletes, and its GetByID
/// reports, files whose trimmed content equals `<id>\r\n<ifname>` or the bare `<id>`;
/// a record is one line of JSON, starting with `{` and holding no CR or LF (JSON escapes
/// them), so it equals neither (container ids are `[A-Za-z0-9][A-Za-z0-9_.-]*`, checked
/// by both implementations' harnesses), and its name, `<ip>.boot`, is not an address.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct BootRecord {
    /// The boot id.
    pub boot: String,
    /// The reservation's content when recorded.
    pub key: String,
    #[serde(rename = "file")]
    id: FileId,
    /// The container's netns path (`CNI_NETNS`) when we made the reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Adopted: a reservation we did not make, proved older than the boot after `boot`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// One reservation removed by reclamation or GC, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub path: PathBuf,
    /// Its content (`id\r\nifname`, or a legacy bare id).
    pub key: String,
    /// The boot it was proved to belong to (reclamation only).
    pub boot: Option<String>,
}

impl Removed {
    /// `10.1.2.3 (ctr/eth0)`, for logs.
    pub fn describe(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let owner = self.key.replacen("\r\n", "/", 1);
        match &self.boot {
            Some(b) => format!("{name} ({owner}, boot {b})"),
            None => format!("{name} ({owner})"),
        }
    }
}

fn record_name(ip: &str) -> String {
    format!("{ip}{BOOT_SUFFIX}")
}

/// A netns that still exists: the path is there and is a network namespace. A path
/// that is gone, or only the empty file an unmounted netns leaves, is dead; anything
/// that is not a regular file (a FIFO would block the open) counts as alive, as does
/// any error: the doubt keeps the reservation.
fn netns_alive(path: &str) -> bool {
    match fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(_) => true,
        Ok(m) if !m.is_file() => true,
        Ok(_) => crate::netns::Netns::open(path).is_ok(),
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
            if !(top && (name == INDEX_DIR || name == BOOT_DIR)) {
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

    fn boot_dir(&self) -> PathBuf {
        self.dir().join(BOOT_DIR)
    }

    fn ensure_boot_dir(&mut self) -> Result<PathBuf> {
        let d = self.boot_dir();
        if !d.is_dir() {
            // Creating it changes the network directory: the stamp goes first.
            self.unstamp()?;
            self.need_stamp = true;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&d)
                .with_context(|| format!("failed to create {}", d.display()))?;
        }
        Ok(d)
    }

    /// Whether the index is in use (tests and diagnostics).
    pub fn indexed(&self) -> bool {
        self.indexed
    }

    /// The recorded stamp, if it matches the directory as it is.
    fn matching_stamp(&self) -> Option<Stamp> {
        let s = fs::read_to_string(self.index_dir().join(STAMP)).ok()?;
        let recorded = serde_json::from_str::<Stamp>(&s).ok()?;
        Stamp::of(self.dir())
            .is_ok_and(|now| now.same_dir(&recorded))
            .then_some(recorded)
    }

    #[cfg(test)]
    fn stamp_matches(&self) -> bool {
        self.matching_stamp().is_some()
    }

    /// Called with the boot of a stamp that matches. The first call of a new boot finds
    /// the stamp of an earlier one: every reservation present existed then, so those
    /// without a valid record are adopted with that boot. The stamp is then rewritten
    /// with the current boot, so this runs once per boot (O(reservations), like a scan).
    fn boot_transition(&mut self, stamped: Option<String>) -> Result<()> {
        let Some(now) = self.store.boot.clone() else {
            return Ok(());
        };
        if stamped.as_deref() == Some(now.as_str()) {
            return Ok(());
        }
        if let Some(earlier) = stamped {
            // Losing records only makes reservations of unknown boot (left to GC): a
            // failure here must not fail the call.
            if let Err(e) = self.adopt(&earlier) {
                eprintln!("host-local: boot records not adopted: {e:#}");
            }
        }
        self.unstamp()?;
        self.need_stamp = true;
        Ok(())
    }

    /// Give every indexed reservation without a valid record one saying `earlier`.
    fn adopt(&mut self, earlier: &str) -> Result<()> {
        let idx = self.index_dir();
        let mut todo = Vec::new();
        for e in fs::read_dir(&idx).with_context(|| format!("failed to read {}", idx.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == STAMP || name.starts_with(TMP_RESERVE) || name.starts_with(TMP_WRITE) {
                continue;
            }
            // A damaged entry adopts nothing (its reservations stay of unknown boot).
            let Some(entry) = fs::read_to_string(e.path())
                .ok()
                .and_then(|s| serde_json::from_str::<Entry>(&s).ok())
            else {
                continue;
            };
            let key = entry.key();
            for ip in entry.ips {
                let ip = ip.to_string();
                let Some(id) = FileId::of(&self.dir().join(&ip)) else {
                    continue;
                };
                if self.record(&ip).is_some_and(|r| r.id == id && r.key == key) {
                    continue;
                }
                todo.push((ip, key.clone(), id));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let bdir = self.ensure_boot_dir()?;
        for (ip, key, id) in todo {
            let rec = BootRecord {
                boot: earlier.to_string(),
                key,
                id,
                netns: None,
                adopted: true,
            };
            write_atomic(&bdir.join(record_name(&ip)), &serde_json::to_string(&rec)?)?;
        }
        Ok(())
    }

    /// The record of reservation `<ip>`, if there is a readable one.
    fn record(&self, ip: &str) -> Option<BootRecord> {
        let s = fs::read_to_string(self.boot_dir().join(record_name(ip))).ok()?;
        serde_json::from_str(&s).ok()
    }

    /// The record of a reservation we just made (the current boot), best effort: a
    /// reservation without a record is only of unknown boot, left to GC.
    fn record_new(&mut self, ip: IpAddr, key: &str, netns: Option<&str>) {
        let Some(boot) = self.store.boot.clone() else {
            return;
        };
        let ip = ip.to_string();
        let written = (|| -> Result<()> {
            let id = FileId::of(&self.dir().join(&ip))
                .ok_or_else(|| anyhow!("reservation {ip} vanished"))?;
            let rec = BootRecord {
                boot,
                key: key.to_string(),
                id,
                netns: netns.filter(|n| !n.is_empty()).map(str::to_string),
                adopted: false,
            };
            let bdir = self.ensure_boot_dir()?;
            write_atomic(&bdir.join(record_name(&ip)), &serde_json::to_string(&rec)?)
        })();
        if let Err(e) = written {
            eprintln!("host-local: no boot record for {ip} (it will be left to GC): {e:#}");
        }
    }

    /// Drop the record of a top-level reservation file that is gone (a record of a file
    /// in a subdirectory would be another file's).
    fn forget_record(&self, path: &Path) {
        if path.parent() == Some(self.dir()) {
            if let Some(name) = path.file_name() {
                let _ = fs::remove_file(self.boot_dir().join(record_name(&name.to_string_lossy())));
            }
        }
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
        // Records whose reservation is gone (released by Go, or by a runtime's rm);
        // temp files of the records' writers are reclaimed like the others.
        let top: HashSet<String> = scan
            .reservations
            .values()
            .flatten()
            .filter(|p| p.parent() == Some(self.dir()))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        if let Ok(rd) = fs::read_dir(self.boot_dir()) {
            for e in rd {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(TMP_RESERVE) || name.starts_with(TMP_WRITE) {
                    scan.temps.push((e.path(), tmp_pid(&name)));
                } else if !name
                    .strip_suffix(BOOT_SUFFIX)
                    .is_some_and(|ip| top.contains(ip))
                {
                    let _ = fs::remove_file(e.path());
                }
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
        self.reserve_in(id, ifname, None, ip, range_id)
    }

    /// [`Locked::reserve`], recording the container's netns path (`CNI_NETNS`) in the
    /// boot record: reclamation never takes an address whose netns still exists.
    pub fn reserve_in(
        &mut self,
        id: &str,
        ifname: &str,
        netns: Option<&str>,
        ip: IpAddr,
        range_id: usize,
    ) -> Result<bool> {
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
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // Only our temp file came and went: the index is still exact, and a
                // new stamp spares the next call a scan after an exhausted range.
                self.need_stamp = true;
                return Ok(false);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to reserve {}", name.display()))
            }
        }
        paths.push(name);
        self.known.insert(content.clone(), paths);
        self.record_new(ip, &content, netns);
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
            match remove(&p) {
                Ok(()) => self.forget_record(&p),
                Err(e) => {
                    errs.push(format!("{e:#}"));
                    left.push(p);
                }
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
    /// id is kept while its container has any valid attachment), whatever its boot, and
    /// every temp file (no writer can be at work while we hold the lock), and drop the
    /// records that no longer describe their file. Returns what went.
    pub fn gc(&mut self, valid: &[(String, String)]) -> Result<Vec<Removed>> {
        self.rescan(true)?;
        let mut out = Vec::new();
        let mut contents: Vec<String> = self.known.keys().cloned().collect();
        contents.sort();
        for content in contents {
            let keep = match content.split_once("\r\n") {
                Some((id, ifname)) => valid.iter().any(|(c, i)| c == id && i == ifname),
                None => valid.iter().any(|(c, _)| *c == content),
            };
            if !keep {
                let paths = self.lookup(&content)?;
                self.release_content(&content)?;
                out.extend(paths.into_iter().map(|path| Removed {
                    path,
                    key: content.clone(),
                    boot: None,
                }));
            }
        }
        self.sweep_records()?;
        Ok(out)
    }

    /// Remove every record that does not describe its reservation file as it is.
    fn sweep_records(&mut self) -> Result<()> {
        let bdir = self.boot_dir();
        let rd = match fs::read_dir(&bdir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", bdir.display())),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let valid = name.strip_suffix(BOOT_SUFFIX).is_some_and(|ip| {
                self.record(ip)
                    .is_some_and(|r| FileId::of(&self.dir().join(ip)).is_some_and(|id| id == r.id))
            });
            if !valid {
                remove(&e.path())?;
            }
        }
        Ok(())
    }

    /// Reclaim the reservations that outlived their containers: a record of an earlier
    /// boot than the current one, still describing its file (same inode and ctime, same
    /// content), whose netns (when recorded) no longer exists. A reservation of the
    /// current boot, of unknown boot (no valid record), or of a live netns is never
    /// touched. Records that describe nothing any more are dropped on the way. Called
    /// when an ADD finds its range exhausted (O(reservations), like the reference's
    /// every call).
    pub fn reclaim_stale(&mut self) -> Result<Vec<Removed>> {
        let Some(now) = self.store.boot.clone() else {
            return Ok(vec![]);
        };
        let bdir = self.boot_dir();
        let rd = match fs::read_dir(&bdir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", bdir.display())),
        };
        let mut names: Vec<String> = Vec::new();
        for e in rd {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let Some(ip) = name
                .strip_suffix(BOOT_SUFFIX)
                .filter(|ip| ip.parse::<IpAddr>().is_ok())
            else {
                continue;
            };
            let path = self.dir().join(ip);
            let Some(rec) = self.record(ip) else {
                remove(&bdir.join(&name))?;
                continue;
            };
            if FileId::of(&path).as_ref() != Some(&rec.id) {
                remove(&bdir.join(&name))?;
                continue;
            }
            if rec.boot == now || rec.netns.as_deref().is_some_and(netns_alive) {
                continue;
            }
            let content = match fs::read_to_string(&path) {
                Ok(c) => c.trim().to_string(),
                Err(_) => continue,
            };
            if content != rec.key {
                continue;
            }
            self.remove_reservation(&content, &path)?;
            out.push(Removed {
                path,
                key: content,
                boot: Some(rec.boot),
            });
        }
        Ok(out)
    }

    /// Remove one reservation file of `content`, keeping the index exact.
    fn remove_reservation(&mut self, content: &str, path: &Path) -> Result<()> {
        let mut paths = self.lookup(content)?;
        self.unstamp()?;
        remove(path)?;
        self.forget_record(path);
        paths.retain(|p| p != path);
        self.known.insert(content.to_string(), paths);
        self.dirty.insert(content.to_string());
        Ok(())
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
        let mut stamp = Stamp::of(self.dir())?;
        stamp.boot = self.store.boot.clone();
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
    fn boot_records_never_read_as_reservations() {
        // What the reference's DEL and GetByID compare (trimmed content against
        // `id\r\nifname` and the bare id; the name parsed as an address) can never match a
        // record, whatever the id and ifname.
        let d = tmpdir("record");
        let store = Store::open(&d, "net").unwrap();
        let mut l = store.lock().unwrap();
        let ip: IpAddr = "10.1.2.2".parse().unwrap();
        assert!(l
            .reserve_in("c1", "eth0", Some("/run/netns/x"), ip, 0)
            .unwrap());
        drop(l);
        let name = record_name(&ip.to_string());
        assert!(name.parse::<IpAddr>().is_err());
        let text = fs::read_to_string(d.join("net").join(BOOT_DIR).join(&name)).unwrap();
        let trimmed = text.trim();
        assert!(trimmed.starts_with('{'), "{text}");
        assert!(!text.contains(['\r', '\n']), "{text:?}");
        assert_ne!(trimmed, key("c1", "eth0"));
        let rec: BootRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(rec.key, "c1\r\neth0");
        assert_eq!(rec.netns.as_deref(), Some("/run/netns/x"));
        assert_eq!(rec.boot, current_boot().unwrap());
        // Our own scan does not take the records' directory for a legacy layout.
        assert!(store.lock().unwrap().indexed());
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
