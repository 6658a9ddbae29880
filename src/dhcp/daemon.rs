//! The dhcp daemon: serves `DHCP.Allocate` / `DHCP.Release` (the reference's methods,
//! over Go net/rpc) plus our `DHCP.Check` and `DHCP.GC`, and keeps every lease alive on a
//! thread of its own (renew at T1, rebind at T2).
//!
//! Leases are written to a state file (write to a temp file, fsync, rename) on every
//! change, so a restarted daemon resumes maintaining them; a lease whose netns or link is
//! gone is forgotten (there is nothing left to send a RELEASE from).
//!
//! Threads: the accept loop, one per connection, one per lease, one waiting for
//! SIGTERM/SIGINT. None of them stays in a container's netns: sockets are opened inside
//! and used from here (see `netns`).

use super::client::{self, ClientOptions, Lease, Link, Params};
use super::rpc::{self, CmdArgs, EMPTY, RESULT};
use super::{client_id, client_options, result_of, Conf};
use crate::cni::types::CniResult;
use crate::netns::Netns;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest sleep of a lease thread: it checks its link at least this often.
const LINK_CHECK_EVERY: Duration = Duration::from_secs(30);

pub struct Options {
    pub socket_path: String,
    pub pidfile: String,
    pub hostprefix: String,
    pub state_file: String,
    pub params: Params,
}

/// What the state file keeps of one lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    client_id: String,
    network: String,
    container_id: String,
    ifname: String,
    /// The netns path as the daemon opens it (host prefix applied).
    netns: String,
    options: ClientOptions,
    priority: i64,
    /// The DHCPACK as sent by the server, hex.
    ack: String,
    acquired: u64,
}

impl Record {
    fn lease(&self) -> Result<Lease> {
        Lease::from_bytes(&unhex(&self.ack)?, self.acquired)
    }
}

#[derive(Serialize, Deserialize, Default)]
struct StateFile {
    leases: Vec<Record>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd hex length");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow!("bad hex"))
        })
        .collect()
}

enum Ctl {
    /// Run the maintenance loop now (the reference's Check on a repeated Allocate).
    Wake,
    /// Stop maintaining; `release` sends a DHCPRELEASE first. Answered on `done`.
    Stop {
        release: bool,
        done: mpsc::Sender<()>,
    },
}

struct Handle {
    rec: Arc<Mutex<Record>>,
    ctl: Mutex<mpsc::Sender<Ctl>>,
}

pub struct Daemon {
    leases: Mutex<HashMap<String, Arc<Handle>>>,
    params: Params,
    hostprefix: String,
    state_file: PathBuf,
    save_lock: Mutex<()>,
    /// Client-ids being acquired: a retried ADD must not race the first for a second lease.
    pending: Mutex<std::collections::HashSet<String>>,
}

/// Marks a client-id as being acquired until dropped.
struct Pending<'a> {
    d: &'a Daemon,
    id: String,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.d
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("dhcp daemon: {msg}");
}

impl Daemon {
    fn save(&self) {
        let _g = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        let leases: Vec<Record> = {
            let map = self.leases.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<Record> = map
                .values()
                .map(|h| h.rec.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .collect();
            v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
            v
        };
        if let Err(e) = write_atomic(&self.state_file, &StateFile { leases }) {
            log(format!(
                "cannot save leases to {:?}: {e:#}",
                self.state_file
            ));
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Handle>> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn take(&self, id: &str) -> Option<Arc<Handle>> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    fn result(rec: &Record) -> Result<CniResult> {
        result_of(&rec.lease()?, rec.priority)
    }

    /// Start maintaining `rec` on its own thread.
    fn start(self: &Arc<Self>, rec: Record, link: Link) {
        let (tx, rx) = mpsc::channel();
        let id = rec.client_id.clone();
        let handle = Arc::new(Handle {
            rec: Arc::new(Mutex::new(rec)),
            ctl: Mutex::new(tx),
        });
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, handle.clone());
        self.save();
        let me = self.clone();
        std::thread::spawn(move || me.maintain(handle, link, rx));
    }

    fn forget(&self, handle: &Arc<Handle>) {
        let id = handle
            .rec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .client_id
            .clone();
        let mut map = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&id).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            map.remove(&id);
        }
        drop(map);
        self.save();
    }

    /// The lease's life: sleep until T1, renew (unicast), after T2 rebind (broadcast),
    /// after expiry start over; stop when told, or when the netns or link is gone.
    fn maintain(&self, handle: Arc<Handle>, link: Link, rx: mpsc::Receiver<Ctl>) {
        let mut retry = Duration::from_secs(2);
        loop {
            let rec = handle.rec.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if !link_present(&rec.netns, &rec.ifname) {
                log(format!(
                    "{}: {} in {} is gone, forgetting the lease",
                    rec.client_id, rec.ifname, rec.netns
                ));
                self.forget(&handle);
                return;
            }
            let lease = match rec.lease() {
                Ok(l) => l,
                Err(e) => {
                    log(format!("{}: stored lease unreadable: {e:#}", rec.client_id));
                    self.forget(&handle);
                    return;
                }
            };
            let now = client::now_unix();
            let mut wait = if now < lease.renew_at() {
                Duration::from_secs(lease.renew_at() - now).min(LINK_CHECK_EVERY)
            } else {
                let rebind = now >= lease.rebind_at();
                let got = if now >= lease.expires_at() {
                    log(format!("{}: lease expired, acquiring again", rec.client_id));
                    client::acquire(&link, &rec.options, &self.params, &|_| true)
                } else {
                    log(format!(
                        "{}: {} lease",
                        rec.client_id,
                        if rebind { "rebinding" } else { "renewing" }
                    ));
                    client::renew(&link, &lease, &rec.options, &self.params, rebind)
                };
                match got {
                    Ok(new) => {
                        retry = Duration::from_secs(2);
                        let bytes = new.to_bytes().unwrap_or_default();
                        {
                            let mut r = handle.rec.lock().unwrap_or_else(|e| e.into_inner());
                            r.ack = hex(&bytes);
                            r.acquired = new.acquired;
                        }
                        self.save();
                        log(format!(
                            "{}: lease {} renewed, expires in {} s",
                            rec.client_id,
                            new.yiaddr(),
                            new.times().0
                        ));
                        Duration::ZERO
                    }
                    Err(e) => {
                        log(format!("{}: {e:#}", rec.client_id));
                        let w = retry;
                        retry = (retry * 2).min(self.params.resend_max);
                        w
                    }
                }
            };
            if wait.is_zero() {
                wait = Duration::from_millis(1);
            }
            match rx.recv_timeout(wait) {
                Ok(Ctl::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Ctl::Stop { release, done }) => {
                    if release {
                        if let Err(e) = client::release(&link, &lease, &rec.options) {
                            log(format!("{}: DHCPRELEASE failed: {e:#}", rec.client_id));
                        } else {
                            log(format!("{}: released {}", rec.client_id, lease.yiaddr()));
                        }
                    }
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Stop a lease's thread, releasing the lease if asked; bounded wait.
    fn stop(&self, handle: &Handle, release: bool) {
        let (done, wait) = mpsc::channel();
        let sent = handle
            .ctl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Ctl::Stop { release, done })
            .is_ok();
        if sent {
            let _ = wait.recv_timeout(self.params.timeout + Duration::from_secs(5));
        }
    }

    fn allocate(self: &Arc<Self>, args: &CmdArgs) -> Result<CniResult> {
        let conf = Conf::parse(&args.stdin)?;
        let options = client_options(&conf, &args.container_id, &args.ifname, &args.args)?;
        let id = client_id(&args.container_id, &conf.name, &args.ifname);
        let priority = conf.ipam().priority;
        if let Some(h) = self.get(&id) {
            let _ = h
                .ctl
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(Ctl::Wake);
            let mut rec = h.rec.lock().unwrap_or_else(|e| e.into_inner());
            rec.priority = priority;
            return Daemon::result(&rec);
        }
        if !self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone())
        {
            return Err(crate::error::cni_err(
                crate::error::Code::TryAgainLater,
                format!("a lease for {id:?} is being acquired already"),
            ));
        }
        let _pending = Pending {
            d: self,
            id: id.clone(),
        };
        let netns = format!("{}{}", self.hostprefix, args.netns);
        let link = Link::open(&netns, &args.ifname)?;
        log(format!("{id}: acquiring lease"));
        let lease = client::acquire(&link, &options, &self.params, &|d| {
            std::thread::sleep(d);
            false
        })?;
        let rec = Record {
            client_id: id.clone(),
            network: conf.name.clone(),
            container_id: args.container_id.clone(),
            ifname: args.ifname.clone(),
            netns,
            options,
            priority,
            ack: hex(&lease.to_bytes()?),
            acquired: lease.acquired,
        };
        let result = Daemon::result(&rec)?;
        log(format!(
            "{id}: lease {} acquired, expires in {} s",
            lease.yiaddr(),
            lease.times().0
        ));
        self.start(rec, link);
        Ok(result)
    }

    fn release(&self, args: &CmdArgs) -> Result<()> {
        let conf = Conf::parse(&args.stdin)?;
        let id = client_id(&args.container_id, &conf.name, &args.ifname);
        if let Some(h) = self.take(&id) {
            self.stop(&h, true);
            self.save();
        }
        Ok(())
    }

    /// Verify without acquiring: the lease must be held (and is being maintained).
    fn check(&self, args: &CmdArgs) -> Result<CniResult> {
        let conf = Conf::parse(&args.stdin)?;
        let id = client_id(&args.container_id, &conf.name, &args.ifname);
        let h = self
            .get(&id)
            .ok_or_else(|| anyhow!("the daemon holds no lease for {id:?}"))?;
        let rec = h.rec.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Daemon::result(&rec)
    }

    /// Release this network's leases whose attachment is not in the valid list.
    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let conf = Conf::parse(&args.stdin)?;
        let raw: serde_json::Value = serde_json::from_slice(&args.stdin)?;
        let list = raw
            .get("cni.dev/valid-attachments")
            .or_else(|| raw.get("cni.dev/attachments"))
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        let valid: Vec<(String, String)> = list
            .iter()
            .map(|a| {
                let s = |k: &str| a.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                (s("containerID"), s("ifname"))
            })
            .collect();
        let stale: Vec<String> = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|h| {
                let r = h.rec.lock().unwrap_or_else(|e| e.into_inner());
                let keep = r.network != conf.name
                    || valid
                        .iter()
                        .any(|(c, i)| *c == r.container_id && *i == r.ifname);
                (!keep).then(|| r.client_id.clone())
            })
            .collect();
        for id in stale {
            if let Some(h) = self.take(&id) {
                log(format!("{id}: not in the valid attachments, releasing"));
                self.stop(&h, true);
            }
        }
        self.save();
        Ok(())
    }

    fn handle(self: &Arc<Self>, method: &str, args: CmdArgs) -> rpc::Reply {
        let out = match method {
            "DHCP.Allocate" => self
                .allocate(&args)
                .map(|r| (&RESULT, rpc::result_to_value(&r))),
            "DHCP.Check" => self
                .check(&args)
                .map(|r| (&RESULT, rpc::result_to_value(&r))),
            "DHCP.Release" => self
                .release(&args)
                .map(|()| (&EMPTY, super::gob::Value::Struct(vec![]))),
            "DHCP.GC" => self
                .gc(&args)
                .map(|()| (&EMPTY, super::gob::Value::Struct(vec![]))),
            _ => return Err(format!("rpc: can't find method {method}")),
        };
        out.map_err(|e| {
            let code = crate::error::CniError::from_anyhow(&e);
            // Our plugin reads the code back from this prefix; Go's just shows the text.
            format!("cni code {}: {}", code.code, code.msg)
        })
    }
}

/// Is `ifname` still in the netns at `path`?
fn link_present(path: &str, ifname: &str) -> bool {
    let Ok(ns) = Netns::open(path) else {
        return false;
    };
    match crate::netlink::Nl::open_in(&ns)
        .and_then(|nl| nl.link(crate::netlink::link::LinkId::Name(ifname)))
    {
        Ok(l) => l.is_some(),
        // Could not ask (e.g. out of fds): assume it is there and ask again later.
        Err(_) => true,
    }
}

/// The leases, replaced whole (temp file, fsync, rename, directory fsync).
fn write_atomic(path: &Path, state: &StateFile) -> Result<()> {
    crate::statefile::write_atomic(path, &serde_json::to_vec_pretty(state)?)
}

/// The listening socket: systemd's (LISTEN_FDS=1, fd 3) or our own at `path`, in a
/// directory of mode 0700, the socket itself 0600 (root only).
fn listener(path: &str) -> Result<UnixListener> {
    if let Some(l) = activation_listener()? {
        return Ok(l);
    }
    let p = Path::new(path);
    if let Some(dir) = p.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {dir:?}"))?;
        }
    }
    if p.exists() {
        if UnixStream::connect(p).is_ok() {
            bail!("another daemon is serving {path}");
        }
        std::fs::remove_file(p).with_context(|| format!("removing stale socket {path}"))?;
    }
    let l = UnixListener::bind(p).with_context(|| format!("listening on {path}"))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// systemd socket activation: LISTEN_PID is us and LISTEN_FDS is 1.
fn activation_listener() -> Result<Option<UnixListener>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: usize = match std::env::var("LISTEN_FDS") {
        Ok(s) if pid_ok => s
            .parse()
            .map_err(|_| anyhow!("LISTEN_FDS={s:?} is not a number"))?,
        _ => return Ok(None),
    };
    match n {
        0 => Ok(None),
        1 => Ok(Some(take_fd3()?)),
        n => bail!("Too many ({n}) FDs passed through socket activation"),
    }
}

/// Take ownership of fd 3, which systemd handed us (checked to be a listening socket).
#[allow(unsafe_code)]
fn take_fd3() -> Result<UnixListener> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    const FD: i32 = 3;
    // SAFETY: fd 3 is only borrowed for the check; LISTEN_PID named this process, so
    // the descriptor was passed to us and nothing else in the process owns it.
    let ty = nix::sys::socket::getsockopt(
        &unsafe { BorrowedFd::borrow_raw(FD) },
        nix::sys::socket::sockopt::SockType,
    )
    .context("LISTEN_FDS=1 but fd 3 is not a socket")?;
    if ty != nix::sys::socket::SockType::Stream {
        bail!("LISTEN_FDS=1 but fd 3 is not a stream socket");
    }
    // SAFETY: as above; we take it once and unset LISTEN_FDS so no one takes it again.
    let fd = unsafe { OwnedFd::from_raw_fd(FD) };
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    Ok(UnixListener::from(fd))
}

/// Resume the leases of the state file: those whose netns and link exist are maintained
/// again (renewed at once if their T1 passed while we were down); the others forgotten.
fn resume(d: &Arc<Daemon>) {
    let state: StateFile = match std::fs::read(&d.state_file) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(s) => s,
            Err(e) => {
                log(format!("ignoring unreadable state {:?}: {e}", d.state_file));
                StateFile::default()
            }
        },
        Err(_) => StateFile::default(),
    };
    for rec in state.leases {
        let link = Link::open(&rec.netns, &rec.ifname);
        match link {
            Ok(link) if rec.lease().is_ok() => {
                log(format!("{}: resuming lease", rec.client_id));
                d.start(rec, link);
            }
            Ok(_) => log(format!(
                "{}: stored lease unreadable, forgotten",
                rec.client_id
            )),
            Err(e) => log(format!(
                "{}: {} in {} is gone ({e:#}), lease forgotten",
                rec.client_id, rec.ifname, rec.netns
            )),
        }
    }
    d.save();
}

pub fn run(opts: Options) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    // Block the stop signals in every thread (they inherit the mask); one thread waits.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block()?;

    if !opts.pidfile.is_empty() {
        if !opts.pidfile.starts_with('/') {
            bail!(
                "Error writing pidfile {:?}: path not absolute",
                opts.pidfile
            );
        }
        std::fs::write(&opts.pidfile, std::process::id().to_string())
            .with_context(|| format!("Error writing pidfile {:?}", opts.pidfile))?;
    }
    let socket_path = format!("{}{}", opts.hostprefix, opts.socket_path);
    let l = listener(&socket_path)?;
    let d = Arc::new(Daemon {
        leases: Mutex::new(HashMap::new()),
        params: opts.params.clone(),
        hostprefix: opts.hostprefix.clone(),
        state_file: PathBuf::from(&opts.state_file),
        save_lock: Mutex::new(()),
        pending: Mutex::new(Default::default()),
    });
    // Leases are resumed before connections are accepted (they wait in the backlog).
    resume(&d);

    {
        let d = d.clone();
        let pidfile = opts.pidfile.clone();
        let socket_path = socket_path.clone();
        std::thread::spawn(move || {
            let sig = sigs.wait();
            log(format!(
                "{sig:?}: shutting down; leases stay in the state file"
            ));
            d.save();
            let _ = std::fs::remove_file(&socket_path);
            if !pidfile.is_empty() {
                let _ = std::fs::remove_file(&pidfile);
            }
            std::process::exit(0);
        });
    }

    log(format!("listening on {socket_path}"));
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let d = d.clone();
        std::thread::spawn(move || {
            let handler = |m: &str, a: CmdArgs| d.handle(m, a);
            if let Err(e) = rpc::serve_conn(conn, &handler) {
                log(format!("connection: {e:#}"));
            }
        });
    }
    Ok(())
}
