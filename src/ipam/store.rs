//! host-local's on-disk state, byte-compatible with the Go plugin in both directions:
//! `<dataDir>/<network>/<ip>` holding `<container id>\r\n<ifname>` (no newline, mode
//! 0600), `last_reserved_ip.<range set index>`, and `lock`, an empty file that both
//! implementations `flock(2)` (std's `File::lock` makes exactly that call).
//!
//! Improvements that Go readers never notice:
//! - a reservation appears atomically with its content (written to a temp file, then
//!   `link(2)`ed to its name, which fails if the name exists), so a crash can never leave
//!   an empty, unreleasable reservation file;
//! - each attachment we allocate for gets an index file under `.cnibox-index/` listing
//!   its addresses, so DEL deletes them without reading every file. The index holds JSON,
//!   which never equals a reservation's content, so Go's content-matching scan ignores it.
//!   An index that disagrees with the files (Go released and re-allocated in between) is
//!   not trusted: DEL then falls back to the reference's full scan.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha512};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const INDEX_DIR: &str = ".cnibox-index";
/// Temp files of reservations in progress; a crash can leave one behind, with the
/// content of the reservation it was for, so DEL and GC treat it like a reservation.
const RESERVE_TMP: &str = ".tmp-r-";

pub struct Store {
    dir: PathBuf,
    lock: File,
}

/// The store while its lock is held; dropping it unlocks.
pub struct Locked<'a> {
    store: &'a Store,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.store.lock.unlock();
    }
}

fn key(id: &str, ifname: &str) -> String {
    format!("{}\r\n{ifname}", id.trim())
}

/// One reservation found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub path: PathBuf,
    pub id: String,
    /// `None` for the legacy id-only format.
    pub ifname: Option<String>,
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

    pub fn lock(&self) -> Result<Locked<'_>> {
        self.lock
            .lock()
            .with_context(|| format!("failed to lock {}", self.dir.join("lock").display()))?;
        Ok(Locked { store: self })
    }
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

fn tmp_name(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(".tmp-{what}-{}-{nanos}", std::process::id())
}

/// Replace `path` atomically with `content` (mode 0600).
fn write_atomic(dir: &Path, path: &Path, content: &str) -> Result<()> {
    let tmp = dir.join(tmp_name("w"));
    write_new(&tmp, content).with_context(|| format!("failed to write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

impl Locked<'_> {
    fn dir(&self) -> &Path {
        &self.store.dir
    }

    /// Reserve `ip` for the attachment; `Ok(false)` if it is taken.
    pub fn reserve(&self, id: &str, ifname: &str, ip: IpAddr, range_id: usize) -> Result<bool> {
        let name = self.dir().join(ip.to_string());
        let tmp = self.dir().join(tmp_name(&format!("r-{ip}")));
        write_new(&tmp, &key(id, ifname))
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        let linked = fs::hard_link(&tmp, &name);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(e).with_context(|| format!("failed to reserve {}", name.display()))
            }
        }
        write_atomic(
            self.dir(),
            &self.dir().join(format!("last_reserved_ip.{range_id}")),
            &ip.to_string(),
        )?;
        Ok(true)
    }

    pub fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
        match fs::read_to_string(self.dir().join(format!("last_reserved_ip.{range_id}"))) {
            Ok(s) => s.trim().parse().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                eprintln!("Error retrieving last reserved ip: {e}");
                None
            }
        }
    }

    /// Every reservation-like file (named after an IP, or one of our crashed temp files),
    /// recursively like the reference, skipping our index.
    pub fn list(&self) -> Result<Vec<Reservation>> {
        let mut out = Vec::new();
        walk(self.dir(), &mut out)?;
        Ok(out)
    }

    /// The attachment's addresses (full scan, as the duplicate-allocation check must
    /// also see reservations the Go plugin made).
    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let id = id.trim();
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.id == id && r.ifname.as_deref() == Some(ifname))
            .filter_map(|r| {
                r.path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse().ok())
            })
            .collect())
    }

    fn index_path(&self, id: &str, ifname: &str) -> PathBuf {
        let h = Sha512::digest(key(id, ifname).as_bytes());
        let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.dir().join(INDEX_DIR).join(hex)
    }

    /// Record the attachment's addresses for a fast DEL.
    pub fn write_index(&self, id: &str, ifname: &str, ips: &[IpAddr]) -> Result<()> {
        let p = self.index_path(id, ifname);
        if let Some(parent) = p.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        let v = serde_json::json!({"id": id.trim(), "ifname": ifname, "ips": ips});
        write_atomic(self.dir(), &p, &v.to_string())
    }

    fn read_index(&self, id: &str, ifname: &str) -> Option<Vec<IpAddr>> {
        let s = fs::read_to_string(self.index_path(id, ifname)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        if v["id"] != id.trim() || v["ifname"] != ifname {
            return None;
        }
        v["ips"]
            .as_array()?
            .iter()
            .map(|x| x.as_str().and_then(|s| s.parse().ok()))
            .collect()
    }

    /// Release everything of (id, ifname): the reference's rules (exact match, else the
    /// legacy id-only files), through the index when it can be trusted.
    pub fn release(&self, id: &str, ifname: &str) -> Result<()> {
        let want = key(id, ifname);
        if let Some(ips) = self.read_index(id, ifname) {
            let mut trusted = true;
            for ip in &ips {
                let p = self.dir().join(ip.to_string());
                match fs::read_to_string(&p) {
                    Ok(c) if c.trim() == want => remove(&p)?,
                    _ => trusted = false,
                }
            }
            let _ = fs::remove_file(self.index_path(id, ifname));
            if trusted {
                return Ok(());
            }
        }
        let all = self.list()?;
        let id = id.trim();
        let exact: Vec<&Reservation> = all
            .iter()
            .filter(|r| r.id == id && r.ifname.as_deref() == Some(ifname))
            .collect();
        let victims: Vec<&Reservation> = if exact.is_empty() {
            all.iter()
                .filter(|r| r.id == id && r.ifname.is_none())
                .collect()
        } else {
            exact
        };
        let mut errs = Vec::new();
        for r in victims {
            if let Err(e) = remove(&r.path) {
                errs.push(format!("{e:#}"));
            }
        }
        if !errs.is_empty() {
            return Err(anyhow!("{}", errs.join(";")));
        }
        Ok(())
    }

    /// Remove one reservation file (and any stale index entry is harmless).
    pub fn release_path(&self, r: &Reservation) -> Result<()> {
        remove(&r.path)?;
        if let Some(ifname) = &r.ifname {
            let _ = fs::remove_file(self.index_path(&r.id, ifname));
        }
        Ok(())
    }
}

fn remove(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to release {}", p.display())),
    }
}

fn walk(dir: &Path, out: &mut Vec<Reservation>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", dir.display())),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if name != INDEX_DIR {
                walk(&entry.path(), out)?;
            }
            continue;
        }
        if !ft.is_file() || !(name.parse::<IpAddr>().is_ok() || name.starts_with(RESERVE_TMP)) {
            continue;
        }
        let Ok(content) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let content = content.trim();
        if content.is_empty() {
            continue;
        }
        let (id, ifname) = match content.split_once("\r\n") {
            Some((i, f)) => (i.trim().to_string(), Some(f.trim().to_string())),
            None => (content.to_string(), None),
        };
        out.push(Reservation {
            path: entry.path(),
            id,
            ifname,
        });
    }
    Ok(())
}
