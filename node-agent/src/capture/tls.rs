//! TLS plaintext capture with uprobes on OpenSSL's libssl, attached per process.
//!
//! [`TlsProbes`] loads the TLS programs of the embedded eBPF object (reads and writes at entry and
//! return, `SSL_free` at entry) and attaches them to one process at a time
//! ([`TlsProbes::attach_tls`]): the kernel places the breakpoints only in that process's address
//! space, so other OpenSSL users on the node do not trap. Reads and writes are probed in the
//! internal functions that `SSL_read`/`SSL_read_ex` and `SSL_write`/`SSL_write_ex` call when
//! [`openssl_entry::Library::internal_entries`] finds them (fewer and cheaper traps), else in the four exported
//! functions ([`ProbePlacement`]). Plaintext goes into
//! the capture ring buffer as [`palisade_common::PageCaptureRecord`]s with `family == FAMILY_TLS`;
//! the field meanings are documented next to [`palisade_common::FAMILY_TLS`] and decoded by
//! [`tls_endpoints`].
//!
//! The programs share the ring buffer of [`super::CaptureProbes`] ([`TlsProbes::load_sharing`]):
//! the ring is pinned in bpffs for the moment the TLS object is loaded, then unpinned. Without
//! bpffs, [`TlsProbes::load_standalone`] gives the TLS programs a ring of their own.
//!
//! Cost: every hooked call traps into the kernel in the attached process (measured 4–6 µs per
//! call on the reference VMs), so TLS capture is opt-in per workload.

use std::{
    collections::BTreeMap,
    fs, io,
    num::NonZeroU32,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        ProgramError, UProbe, UProbeError,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use palisade_common::{
    CaptureCounters, CaptureHeader, DIRECTION_INGRESS, FAMILY_TLS, FAMILY_TLS_SESSION, MAP_CAPTURE_COUNTERS,
    MAP_CAPTURE_RING, MAP_CAPTURE_RINGS, MAP_TLS_HANDSHAKE_ARGS, MAP_TLS_READ_ARGS, MAP_TLS_SESSION_POINTERS,
    MAP_TLS_STREAM_OFFSETS, MAP_TLS_WRITE_ARGS, PROG_TLS_FREE, PROG_TLS_HANDSHAKE_ENTER,
    PROG_TLS_HANDSHAKE_EXIT, PROG_TLS_READ_ENTER, PROG_TLS_READ_EXIT, PROG_TLS_READ_EX_ENTER,
    PROG_TLS_WRITE_ENTER, PROG_TLS_WRITE_EXIT, PROG_TLS_WRITE_EX_ENTER, PROG_TLS_WRITE_FLAGS_ENTER,
    TLS_ARGS_MAX_ENTRIES, TLS_SESSION_POINTER_NONE, TLS_STREAM_MAX_ENTRIES,
};

use super::openssl_entry::{self, ExportedWrites, InternalEntries};
use super::{error_chain, verifier_excerpt, with_permission_hint, CaptureRing};

/// The eBPF object built by `build.rs` (the same object `CaptureProbes` loads).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/node-agent-ebpf"));

/// Every TLS program of the object.
const TLS_PROGRAMS: [&str; 10] = [
    PROG_TLS_HANDSHAKE_ENTER,
    PROG_TLS_HANDSHAKE_EXIT,
    PROG_TLS_READ_ENTER,
    PROG_TLS_READ_EX_ENTER,
    PROG_TLS_READ_EXIT,
    PROG_TLS_WRITE_ENTER,
    PROG_TLS_WRITE_EX_ENTER,
    PROG_TLS_WRITE_FLAGS_ENTER,
    PROG_TLS_WRITE_EXIT,
    PROG_TLS_FREE,
];

/// Where a probe goes in the library.
#[derive(Clone, Copy, Debug)]
enum At {
    /// An exported function.
    Symbol(&'static str),
    /// A file offset (an internal function found by [`openssl_entry::Library::internal_entries`]).
    Offset(u64),
}

/// One probe of an attachment.
#[derive(Clone, Copy, Debug)]
struct Hook {
    /// The library function, as reported in [`TlsAttachment::functions`].
    function: &'static str,
    at: At,
    program: &'static str,
    /// A missing optional exported symbol is reported, not an error.
    required: bool,
}

const fn exported(function: &'static str, program: &'static str, required: bool) -> Hook {
    Hook {
        function,
        at: At::Symbol(function),
        program,
        required,
    }
}

/// The exported functions that may be probed: `SSL_read`/`SSL_write` exist in every OpenSSL (and
/// LibreSSL/BoringSSL); the `_ex` variants since OpenSSL 1.1.1, `SSL_write_ex2` (its `written`
/// the fifth argument) since 3.2. [`hooks_for_writes`] picks the write functions of a library.
const EXPORTED_HOOKS: [Hook; 11] = [
    exported("SSL_read", PROG_TLS_READ_ENTER, true),
    exported("SSL_read", PROG_TLS_READ_EXIT, true),
    exported("SSL_write", PROG_TLS_WRITE_ENTER, true),
    exported("SSL_write", PROG_TLS_WRITE_EXIT, true),
    exported("SSL_read_ex", PROG_TLS_READ_EX_ENTER, false),
    exported("SSL_read_ex", PROG_TLS_READ_EXIT, false),
    exported("SSL_write_ex", PROG_TLS_WRITE_EX_ENTER, false),
    exported("SSL_write_ex", PROG_TLS_WRITE_EXIT, false),
    exported("SSL_write_ex2", PROG_TLS_WRITE_FLAGS_ENTER, false),
    exported("SSL_write_ex2", PROG_TLS_WRITE_EXIT, false),
    exported("SSL_free", PROG_TLS_FREE, false),
];

/// [`EXPORTED_HOOKS`] for a library, with the write functions
/// [`openssl_entry::Library::exported_writes`] picks: on OpenSSL 3.2+ `SSL_write_ex2` in place of
/// `SSL_write_ex` (which calls it), so that a program calling it directly is captured too, and
/// each write still once.
fn hooks_for_writes(writes: ExportedWrites) -> Vec<Hook> {
    EXPORTED_HOOKS
        .iter()
        .copied()
        .filter(|h| match h.function {
            "SSL_write" => writes.write,
            "SSL_write_ex" => writes.write_ex,
            "SSL_write_ex2" => writes.write_ex2,
            _ => true,
        })
        .collect()
}

/// The internal functions the four exported ones call, with the `_ex` calling convention
/// (`(ssl, buf, num, &bytes)`, positive on success; OpenSSL 3.2+ writes take flags before
/// `&bytes`): one probe pair for both variants, and cheaper traps (see [`openssl_entry`]).
fn internal_hooks(entries: InternalEntries) -> [Hook; 5] {
    let write_enter = if entries.write_flags {
        PROG_TLS_WRITE_FLAGS_ENTER
    } else {
        PROG_TLS_WRITE_EX_ENTER
    };
    let internal = |function, offset, program| Hook {
        function,
        at: At::Offset(offset),
        program,
        required: true,
    };
    [
        internal("ssl_read_internal", entries.read, PROG_TLS_READ_EX_ENTER),
        internal("ssl_read_internal", entries.read, PROG_TLS_READ_EXIT),
        internal("ssl_write_internal", entries.write, write_enter),
        internal("ssl_write_internal", entries.write, PROG_TLS_WRITE_EXIT),
        exported("SSL_free", PROG_TLS_FREE, false),
    ]
}

/// The handshake probes of [`ProbePlacement::SessionKeys`]: the `SSL` object once per handshake.
const SESSION_KEY_HOOKS: [Hook; 2] = [
    exported("SSL_do_handshake", PROG_TLS_HANDSHAKE_ENTER, true),
    exported("SSL_do_handshake", PROG_TLS_HANDSHAKE_EXIT, true),
];

/// Where [`TlsProbes::attach_tls`] places the probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbePlacement {
    /// [`ProbePlacement::SessionKeys`], and for a process with a connection the agent could not
    /// decrypt (TLS 1.2, secrets not found), [`ProbePlacement::Calls`] as well from then on
    /// ([`TlsProbes::add_call_probes`]).
    #[default]
    Auto,
    /// Every read and write: the internal functions when they are found in the library's code,
    /// else the exported ones.
    Calls,
    /// Always the exported functions (`SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex`, or
    /// `SSL_write_ex2` in its place on OpenSSL 3.2+).
    Exported,
    /// No probe on reads and writes: `SSL_do_handshake` only, once per connection. The agent
    /// decrypts the TLS 1.3 records the `cgroup_skb` programs capture with the session's traffic
    /// secrets (see [`palisade_common::FAMILY_TLS_SESSION`] and `crate::http::tls_decrypt`).
    /// Connections it cannot decrypt (TLS 1.2, a handshake not completed through
    /// `SSL_do_handshake`) are counted, not captured.
    SessionKeys,
}

impl ProbePlacement {
    /// Whether the agent decrypts captured TLS records (the session-key probes are placed).
    pub fn decrypts(self) -> bool {
        matches!(self, ProbePlacement::Auto | ProbePlacement::SessionKeys)
    }
}

/// Why loading, attaching or detaching TLS capture failed. Every variant carries the kernel's
/// reason (errno text, verifier log tail) where there is one.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The embedded object could not be parsed or one of its maps could not be created.
    #[error("loading the embedded eBPF object for TLS capture refused: {reason}")]
    Object { reason: String },

    /// `BPF_PROG_LOAD` failed for one of the uprobe programs.
    #[error(
        "BPF_PROG_LOAD for uprobe program `{program}` refused: {reason}{}",
        suffix(verifier_log)
    )]
    ProgramLoad {
        program: &'static str,
        reason: String,
        /// Tail of the verifier log (empty when the kernel gave none).
        verifier_log: String,
    },

    /// A program or map is missing from the embedded object (a build problem).
    #[error("the embedded eBPF object has no {kind} named `{name}` (stale or mismatched build)")]
    MissingInObject { kind: &'static str, name: &'static str },

    /// The capture ring buffer could not be shared with the TLS programs.
    #[error(
        "sharing the capture ring buffer with the TLS programs through {} failed: {reason}",
        bpffs.display()
    )]
    ShareRing { bpffs: PathBuf, reason: String },

    /// A map exists but could not be used.
    #[error("map `{map}`: {reason}")]
    Map { map: &'static str, reason: String },

    /// A loaded program's information could not be read.
    #[error("program `{program}`: {reason}")]
    ProgramInfo { program: &'static str, reason: String },

    /// pid 0 names no process.
    #[error("pid 0 is not a process; TLS capture attaches to one process id")]
    InvalidPid,

    /// [`TlsProbes::add_call_probes`] for a process not attached.
    #[error("pid {pid} has no TLS probes to add to")]
    NotAttached { pid: u32 },

    /// The kernel (or the ELF lookup) refused one uprobe; nothing stays attached for that pid.
    #[error(
        "attaching uprobe `{program}` to {symbol} in {} for pid {pid} refused: {reason}",
        library.display()
    )]
    Attach {
        pid: u32,
        program: &'static str,
        symbol: &'static str,
        library: PathBuf,
        reason: String,
    },

    /// Detaching one uprobe link failed.
    #[error("detaching uprobe `{program}` from pid {pid} failed: {reason}")]
    Detach {
        pid: u32,
        program: &'static str,
        reason: String,
    },

    /// [`TlsProbes::take_ring`] on a shared ring, or called twice.
    #[error(
        "the TLS programs have no ring of their own to take (shared with the cgroup capture, or \
         already taken)"
    )]
    RingTaken,
}

fn suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; verifier log (tail): {log}")
    }
}

/// What [`TlsProbes::attach_tls`] hooked in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsAttachment {
    pub pid: u32,
    /// The library file the probes are placed in (as given to `attach_tls`).
    pub library: PathBuf,
    /// Library functions hooked (each at entry, reads and writes also at return).
    pub functions: Vec<&'static str>,
    /// Optional functions the library does not export (e.g. `SSL_read_ex` before OpenSSL 1.1.1).
    pub missing: Vec<&'static str>,
    /// Number of uprobe links held for this process.
    pub links: usize,
    /// Why the internal functions were not probed (`None` when they were, or when the exported
    /// functions were asked for).
    pub internal_not_used: Option<String>,
}

struct PidLinks {
    info: TlsAttachment,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// What [`TlsProbes::place`] hooked.
#[derive(Default)]
struct Placed {
    links: Vec<(&'static str, UProbeLinkId)>,
    functions: Vec<&'static str>,
    missing: Vec<&'static str>,
}

/// The probes on every read and write: OpenSSL's internal functions where found in `libssl`'s
/// code, else the exported ones (and why).
fn call_hooks(library: &openssl_entry::Library) -> (Vec<Hook>, Option<String>) {
    match library.internal_entries() {
        Ok(entries) => (internal_hooks(entries).to_vec(), None),
        Err(reason) => (
            hooks_for_writes(library.exported_writes()),
            Some(reason.to_string()),
        ),
    }
}

/// The TLS uprobe programs, loaded into the kernel, and the processes they are attached to.
///
/// Dropping it detaches every process (the links are owned by this value, not pinned).
pub struct TlsProbes {
    ebpf: Ebpf,
    attached: BTreeMap<u32, PidLinks>,
    /// The TLS programs write into the ring `CaptureProbes` drains.
    shared_ring: bool,
    placement: ProbePlacement,
}

impl std::fmt::Debug for TlsProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProbes")
            .field("attached", &self.attached.keys().collect::<Vec<_>>())
            .field("shared_ring", &self.shared_ring)
            .finish_non_exhaustive()
    }
}

impl TlsProbes {
    /// Loads the TLS programs so that they write into `ring`'s maps (the rings that
    /// [`super::CaptureProbes::take_ring`] returned: one per CPU, and the shared one): the
    /// cgroup_skb records and the TLS records then come out of the same rings, in one drain loop.
    ///
    /// `bpffs` is a mounted BPF file system (usually `/sys/fs/bpf`): the maps are pinned there for
    /// the moment of the load and unpinned before this returns.
    pub fn load_sharing(ring: &CaptureRing, bpffs: &Path) -> Result<Self, TlsError> {
        let share_err = |reason: String| TlsError::ShareRing {
            bpffs: bpffs.to_path_buf(),
            reason,
        };
        let mut shared = vec![(MAP_CAPTURE_RING, ring.shared_ring())];
        if let Some(per_cpu) = ring.per_cpu_rings() {
            shared.push((MAP_CAPTURE_RINGS, per_cpu));
        }
        let seq = PIN_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut pins = vec![];
        let mut loader = sized_loader();
        let mut ids = vec![];
        for (name, map) in &shared {
            let id = map.info().map_err(|e| share_err(error_chain(&e)))?.id();
            let pin = bpffs.join(format!(
                "palisade-tls-{}-{}-{seq}",
                name.to_lowercase(),
                std::process::id()
            ));
            // A pin of this name can only be left by a crashed agent with the same pid (pid 1 in
            // a restarted container): it is ours to replace.
            let _ = fs::remove_file(&pin);
            if let Err(e) = map.pin(&pin) {
                // The pinning error is the one to report; a pin left behind is replaced next time.
                let _ = remove_pins(&pins);
                return Err(share_err(format!(
                    "pinning {name} at {}: {}",
                    pin.display(),
                    error_chain(&e)
                )));
            }
            pins.push(pin);
            ids.push((*name, id));
        }
        for ((name, _), pin) in shared.iter().zip(&pins) {
            loader.map_pin_path(name, pin.as_path());
        }
        let loaded = loader.load(EBPF_OBJECT);
        // Unpin at once: the programs hold their own reference to the maps.
        let unpinned = remove_pins(&pins);
        let ebpf = loaded.map_err(object_error)?;
        if let Err(e) = unpinned {
            return Err(share_err(format!("removing a pin: {e}")));
        }
        for (name, id) in ids {
            let used_id = map_id_of(&ebpf, name)?;
            if used_id != id {
                return Err(share_err(format!(
                    "the TLS programs got {name} map id {used_id}, expected the capture's {id}"
                )));
            }
        }
        Self::finish_load(ebpf, true)
    }

    /// Loads the TLS programs with a ring buffer of their own; take it with
    /// [`TlsProbes::take_ring`] and drain it like the capture ring.
    pub fn load_standalone() -> Result<Self, TlsError> {
        let ebpf = sized_loader().load(EBPF_OBJECT).map_err(object_error)?;
        Self::finish_load(ebpf, false)
    }

    fn finish_load(mut ebpf: Ebpf, shared_ring: bool) -> Result<Self, TlsError> {
        for name in TLS_PROGRAMS {
            let prog = program_mut(&mut ebpf, name)?;
            prog.load().map_err(|e| program_load_error(name, e))?;
        }
        for name in [MAP_CAPTURE_RING, MAP_CAPTURE_COUNTERS] {
            if ebpf.map(name).is_none() {
                return Err(TlsError::MissingInObject { kind: "map", name });
            }
        }
        // The object declares placeholder sizes: make sure the real ones were applied.
        for (name, want) in TLS_MAP_SIZES {
            let map = ebpf
                .map(name)
                .ok_or(TlsError::MissingInObject { kind: "map", name })?;
            let (Map::LruHashMap(data) | Map::HashMap(data)) = map else {
                return Err(TlsError::Map {
                    map: name,
                    reason: "not a hash map".into(),
                });
            };
            let got = data
                .info()
                .map_err(|e| TlsError::Map {
                    map: name,
                    reason: error_chain(&e),
                })?
                .max_entries();
            if got < want {
                return Err(TlsError::Map {
                    map: name,
                    reason: format!("created with {got} entries, {want} wanted"),
                });
            }
        }
        Ok(Self {
            ebpf,
            attached: BTreeMap::new(),
            shared_ring,
            placement: ProbePlacement::default(),
        })
    }

    /// Where later [`TlsProbes::attach_tls`] calls place the probes.
    pub fn set_placement(&mut self, placement: ProbePlacement) {
        self.placement = placement;
    }

    /// Attaches TLS capture to process `pid` (a pid of the node's pid namespace) in `libssl`
    /// (a path this process can open, e.g. from [`find_libssl`]). Only that process traps.
    ///
    /// All-or-nothing: if a required probe fails, the probes placed so far are removed.
    /// Attaching an attached pid again returns its attachment; with another library it is
    /// re-attached there.
    pub fn attach_tls(&mut self, pid: u32, libssl: &Path) -> Result<TlsAttachment, TlsError> {
        if pid == 0 {
            return Err(TlsError::InvalidPid);
        }
        if let Some(att) = self.attached.get(&pid) {
            if att.info.library == libssl {
                return Ok(att.info.clone());
            }
            self.detach_tls(pid)?;
        }
        let (hooks, internal_not_used) = match self.placement {
            ProbePlacement::Exported => (
                hooks_for_writes(openssl_entry::Library::read(libssl).exported_writes()),
                None,
            ),
            ProbePlacement::Calls => call_hooks(&openssl_entry::Library::read(libssl)),
            ProbePlacement::Auto | ProbePlacement::SessionKeys => (SESSION_KEY_HOOKS.to_vec(), None),
        };
        let placed = self.place(pid, libssl, &hooks)?;
        let info = TlsAttachment {
            pid,
            library: libssl.to_path_buf(),
            functions: placed.functions,
            missing: placed.missing,
            links: placed.links.len(),
            internal_not_used,
        };
        self.attached.insert(
            pid,
            PidLinks {
                info: info.clone(),
                links: placed.links,
            },
        );
        Ok(info)
    }

    /// Adds probes on every read and write (as [`ProbePlacement::Calls`] places them) to an
    /// attached process, beside its session-key probes: for a process whose connections the
    /// agent cannot decrypt. Idempotent.
    pub fn add_call_probes(&mut self, pid: u32) -> Result<TlsAttachment, TlsError> {
        let att = self.attached.get(&pid).ok_or(TlsError::NotAttached { pid })?;
        if att.info.functions.iter().any(|f| f.contains("read")) {
            return Ok(att.info.clone());
        }
        let library = att.info.library.clone();
        let (hooks, internal_not_used) = call_hooks(&openssl_entry::Library::read(&library));
        let placed = self.place(pid, &library, &hooks)?;
        let att = self.attached.get_mut(&pid).ok_or(TlsError::NotAttached { pid })?;
        att.links.extend(placed.links);
        att.info.functions.extend(placed.functions);
        att.info.missing.extend(placed.missing);
        att.info.links = att.links.len();
        att.info.internal_not_used = internal_not_used;
        Ok(att.info.clone())
    }

    /// Places `hooks` in `libssl` for `pid`, all or none.
    fn place(&mut self, pid: u32, libssl: &Path, hooks: &[Hook]) -> Result<Placed, TlsError> {
        let scope = NonZeroU32::new(pid).ok_or(TlsError::InvalidPid)?;
        let mut placed = Placed::default();
        for &Hook {
            function,
            at,
            program,
            required,
        } in hooks
        {
            if placed.missing.contains(&function) {
                continue;
            }
            let location = match at {
                At::Symbol(symbol) => UProbeAttachLocation::Symbol(symbol),
                At::Offset(offset) => UProbeAttachLocation::AbsoluteOffset(offset),
            };
            let attached = program_mut(&mut self.ebpf, program).and_then(|prog| {
                match prog.attach(location, libssl, UProbeScope::OneProcess(scope)) {
                    Ok(link) => Ok(Some(link)),
                    Err(e) if !required && is_missing_symbol(&e) => Ok(None),
                    Err(e) => Err(TlsError::Attach {
                        pid,
                        program,
                        symbol: function,
                        library: libssl.to_path_buf(),
                        reason: program_error_reason(&e),
                    }),
                }
            });
            match attached {
                Ok(Some(link)) => {
                    placed.links.push((program, link));
                    if !placed.functions.contains(&function) {
                        placed.functions.push(function);
                    }
                }
                Ok(None) => placed.missing.push(function),
                Err(e) => {
                    // Roll back: the hooks are either all placed or none.
                    let _ = detach_links(&mut self.ebpf, pid, placed.links);
                    return Err(e);
                }
            }
        }
        Ok(placed)
    }

    /// TLS 1.2: `pid`'s `SSL` objects keep their `SSL_SESSION` pointer at byte `offset` (the
    /// agent found it in the process's memory). From now on its session records carry the start
    /// of that session, read while it certainly exists; processes without an entry of their own
    /// try the same offset (key 0), as they likely use the same OpenSSL build.
    pub fn set_session_pointer(&mut self, pid: u32, offset: u32) -> Result<(), TlsError> {
        self.write_session_pointer(&[pid, 0], offset)
    }

    /// The offset recorded for `pid` (or, with 0, the default) by [`Self::set_session_pointer`]
    /// or by the return probe's own search; `None` if there is none or the search found none.
    pub fn session_pointer(&mut self, pid: u32) -> Result<Option<u32>, TlsError> {
        Ok(self
            .session_pointers()?
            .get(&pid, 0)
            .ok()
            .filter(|at| *at != TLS_SESSION_POINTER_NONE))
    }

    /// Records for `pid` alone that its return probe searched its `SSL` object for the session
    /// pointer and found none: the probe copies no session for it (unless a default is set)
    /// and does not search again, as for an OpenSSL whose sessions it does not recognise.
    pub fn set_session_pointer_not_found(&mut self, pid: u32) -> Result<(), TlsError> {
        self.write_session_pointer(&[pid], TLS_SESSION_POINTER_NONE)
    }

    /// Writes `value` for each of `keys` in [`MAP_TLS_SESSION_POINTERS`].
    fn write_session_pointer(&mut self, keys: &[u32], value: u32) -> Result<(), TlsError> {
        let mut pointers = self.session_pointers()?;
        for &key in keys {
            pointers.insert(key, value, 0).map_err(|e| TlsError::Map {
                map: MAP_TLS_SESSION_POINTERS,
                reason: error_chain(&e),
            })?;
        }
        Ok(())
    }

    /// Forgets `pid`'s entry: its return probe searches again at the next handshake (unless a
    /// default is set).
    pub fn forget_session_pointer(&mut self, pid: u32) -> Result<(), TlsError> {
        let _ = self.session_pointers()?.remove(&pid); // absent is fine
        Ok(())
    }

    fn session_pointers(&mut self) -> Result<BpfHashMap<&mut MapData, u32, u32>, TlsError> {
        let map = self
            .ebpf
            .map_mut(MAP_TLS_SESSION_POINTERS)
            .ok_or(TlsError::MissingInObject {
                kind: "map",
                name: MAP_TLS_SESSION_POINTERS,
            })?;
        BpfHashMap::try_from(map).map_err(|e| TlsError::Map {
            map: MAP_TLS_SESSION_POINTERS,
            reason: error_chain(&e),
        })
    }

    /// Removes every probe of `pid`; returns whether it was attached. Works after the process
    /// exited.
    pub fn detach_tls(&mut self, pid: u32) -> Result<bool, TlsError> {
        let Some(att) = self.attached.remove(&pid) else {
            return Ok(false);
        };
        let _ = self.forget_session_pointer(pid);
        detach_links(&mut self.ebpf, pid, att.links)?;
        Ok(true)
    }

    /// Pids currently attached, ascending.
    pub fn attached_pids(&self) -> Vec<u32> {
        self.attached.keys().copied().collect()
    }

    /// The attachment of `pid`, if attached.
    pub fn attachment(&self, pid: u32) -> Option<&TlsAttachment> {
        self.attached.get(&pid).map(|a| &a.info)
    }

    /// Whether the TLS records go into the cgroup capture's ring ([`TlsProbes::load_sharing`]).
    pub fn shares_capture_ring(&self) -> bool {
        self.shared_ring
    }

    /// Sum of the per-CPU counters of the TLS programs: the `tls_*` fields, and `records_emitted`
    /// / `records_lost` of TLS records only (the cgroup_skb programs count in their own copy,
    /// read by `CaptureProbes::counters`).
    pub fn counters(&self) -> Result<CaptureCounters, TlsError> {
        let map = self
            .ebpf
            .map(MAP_CAPTURE_COUNTERS)
            .ok_or(TlsError::MissingInObject {
                kind: "map",
                name: MAP_CAPTURE_COUNTERS,
            })?;
        let map_err = |e: &aya::maps::MapError| TlsError::Map {
            map: MAP_CAPTURE_COUNTERS,
            reason: error_chain(e),
        };
        let array: PerCpuArray<&MapData, CaptureCounters> =
            PerCpuArray::try_from(map).map_err(|e| map_err(&e))?;
        let per_cpu = array.get(&0, 0).map_err(|e| map_err(&e))?;
        Ok(sum_counters(per_cpu.iter()))
    }

    /// What the `SSL_do_handshake` return probe has cost so far: (time spent running, runs), as
    /// the kernel counts them while its BPF statistics are on (`BPF_ENABLE_STATS`).
    pub fn handshake_return_runs(&self) -> Result<(std::time::Duration, u64), TlsError> {
        let missing = TlsError::MissingInObject {
            kind: "program",
            name: PROG_TLS_HANDSHAKE_EXIT,
        };
        let info = self
            .ebpf
            .program(PROG_TLS_HANDSHAKE_EXIT)
            .ok_or(missing)?
            .info()
            .map_err(|e| TlsError::ProgramInfo {
                program: PROG_TLS_HANDSHAKE_EXIT,
                reason: error_chain(&e),
            })?;
        Ok((info.run_time(), info.run_count()))
    }

    /// Takes the TLS programs' own ring buffer ([`TlsProbes::load_standalone`] only).
    pub fn take_ring(&mut self) -> Result<CaptureRing, TlsError> {
        if self.shared_ring {
            return Err(TlsError::RingTaken);
        }
        let map = self.ebpf.take_map(MAP_CAPTURE_RING).ok_or(TlsError::RingTaken)?;
        let map_err = |reason: String| TlsError::Map {
            map: MAP_CAPTURE_RING,
            reason,
        };
        let ring = super::ring::ring_map_data(map).map_err(map_err)?;
        CaptureRing::new(ring, vec![], None).map_err(|e| map_err(format!("mapping the ring: {e}")))
    }
}

/// The real sizes of the TLS maps (the object declares 1 entry each).
const TLS_MAP_SIZES: [(&str, u32); 5] = [
    (MAP_TLS_HANDSHAKE_ARGS, TLS_ARGS_MAX_ENTRIES),
    (MAP_TLS_SESSION_POINTERS, TLS_ARGS_MAX_ENTRIES),
    (MAP_TLS_READ_ARGS, TLS_ARGS_MAX_ENTRIES),
    (MAP_TLS_WRITE_ARGS, TLS_ARGS_MAX_ENTRIES),
    (MAP_TLS_STREAM_OFFSETS, TLS_STREAM_MAX_ENTRIES),
];

/// A loader that creates the TLS maps with their real sizes.
fn sized_loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for (name, size) in TLS_MAP_SIZES {
        loader.map_max_entries(name, size);
    }
    loader
}

/// Distinguishes pins made by one process (several loads, or tests running in parallel).
static PIN_SEQ: AtomicU64 = AtomicU64::new(0);

fn sum_counters<'a>(per_cpu: impl Iterator<Item = &'a CaptureCounters>) -> CaptureCounters {
    let mut sum = CaptureCounters::default();
    per_cpu.for_each(|c| sum.add(c));
    sum
}

/// Removes the pins made for one load; the first error, if any.
fn remove_pins(pins: &[std::path::PathBuf]) -> std::io::Result<()> {
    let mut first = Ok(());
    for pin in pins {
        if let Err(e) = fs::remove_file(pin) {
            first = first.and(Err(e));
        }
    }
    first
}

/// The kernel id of the object's map `name` (one of the maps shared with the capture).
fn map_id_of(ebpf: &Ebpf, name: &'static str) -> Result<u32, TlsError> {
    let map = ebpf
        .map(name)
        .ok_or(TlsError::MissingInObject { kind: "map", name })?;
    let map_err = |reason: String| TlsError::Map { map: name, reason };
    let data = match map {
        Map::RingBuf(data) | Map::ArrayOfMaps(data) => data,
        _ => return Err(map_err("not a ring buffer or an array of maps".into())),
    };
    data.info().map(|i| i.id()).map_err(|e| map_err(error_chain(&e)))
}

fn detach_links(ebpf: &mut Ebpf, pid: u32, links: Vec<(&'static str, UProbeLinkId)>) -> Result<(), TlsError> {
    let mut first_err = None;
    for (program, link) in links {
        let res = program_mut(ebpf, program).and_then(|prog| {
            prog.detach(link).map_err(|e| TlsError::Detach {
                pid,
                program,
                reason: program_error_reason(&e),
            })
        });
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, TlsError> {
    ebpf.program_mut(name)
        .ok_or(TlsError::MissingInObject {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|_: ProgramError| TlsError::MissingInObject {
            kind: "uprobe program",
            name,
        })
}

/// The library does not export the symbol (as opposed to an unreadable file or a kernel refusal).
fn is_missing_symbol(e: &ProgramError) -> bool {
    matches!(e, ProgramError::UProbeError(UProbeError::SymbolError { .. }))
}

fn program_io_error(e: &ProgramError) -> Option<&io::Error> {
    match e {
        ProgramError::LoadError { io_error, .. } => Some(io_error),
        ProgramError::SyscallError(s) => Some(&s.io_error),
        ProgramError::UProbeError(UProbeError::FileError { io_error, .. }) => Some(io_error),
        _ => None,
    }
}

fn program_error_reason(e: &ProgramError) -> String {
    with_permission_hint(error_chain(e), program_io_error(e))
}

fn program_load_error(program: &'static str, e: ProgramError) -> TlsError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => TlsError::ProgramLoad {
            program,
            reason: with_permission_hint(io_error.to_string(), Some(&io_error)),
            verifier_log: verifier_excerpt(&verifier_log.to_string()),
        },
        other => TlsError::ProgramLoad {
            program,
            reason: program_error_reason(&other),
            verifier_log: String::new(),
        },
    }
}

fn object_error(e: EbpfError) -> TlsError {
    let reason = match &e {
        EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) => with_permission_hint(
            format!("BPF_MAP_CREATE for map `{name}` failed: {io_error}"),
            Some(io_error),
        ),
        EbpfError::MapError(aya::maps::MapError::SyscallError(s)) => {
            with_permission_hint(error_chain(&e), Some(&s.io_error))
        }
        other => error_chain(other),
    };
    TlsError::Object { reason }
}

/// The two endpoints of a TLS record: the process and the connection (`SSL *`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlsEndpoints {
    /// Process id (tgid) that called the TLS library.
    pub pid: u32,
    /// The `SSL *` of the connection (unique within the process while the connection lives).
    pub ssl: u64,
}

/// Decodes the endpoints of a record with `family == FAMILY_TLS`, or of a session record
/// (`FAMILY_TLS_SESSION`, laid out as an INGRESS plaintext record); `None` for other records.
pub fn tls_endpoints(h: &CaptureHeader) -> Option<TlsEndpoints> {
    if h.family != FAMILY_TLS && h.family != FAMILY_TLS_SESSION {
        return None;
    }
    let (connection, process) = if h.direction == DIRECTION_INGRESS {
        (&h.source_addr, &h.dest_addr)
    } else {
        (&h.dest_addr, &h.source_addr)
    };
    let mut pid = [0u8; 4];
    pid.copy_from_slice(&process[..4]);
    let mut ssl = [0u8; 8];
    ssl.copy_from_slice(&connection[..8]);
    Some(TlsEndpoints {
        pid: u32::from_le_bytes(pid),
        ssl: u64::from_le_bytes(ssl),
    })
}

/// The libssl mapped by process `pid`, as a path this (host) process can open: through
/// `/proc/<pid>/root` so that a containerised process's own library is found, or through
/// `/proc/<pid>/map_files/` when the mapped file was deleted or replaced on disk.
///
/// `None` when the process is gone or maps no `libssl.so*` (e.g. OpenSSL linked statically).
pub fn find_libssl(pid: u32) -> Option<PathBuf> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let maps = fs::read_to_string(proc_dir.join("maps")).ok()?;
    let entry = libssl_mapping(&maps)?;
    let via_root = proc_dir
        .join("root")
        .join(entry.path.strip_prefix("/").unwrap_or(entry.path));
    if !entry.deleted {
        if let Ok(meta) = fs::metadata(&via_root) {
            if meta.ino() == entry.inode {
                return Some(via_root);
            }
        }
    }
    // Deleted, replaced (another inode now at that path) or not reachable through the root.
    let via_map_files = proc_dir.join("map_files").join(entry.range);
    fs::metadata(&via_map_files).ok().map(|_| via_map_files)
}

/// One file mapping of `/proc/<pid>/maps`.
#[derive(Debug, PartialEq, Eq)]
struct Mapping<'a> {
    /// `start-end`, as named in `/proc/<pid>/map_files/`.
    range: &'a str,
    inode: u64,
    path: &'a Path,
    deleted: bool,
}

/// The first mapping of a `libssl.so*` file.
fn libssl_mapping(maps: &str) -> Option<Mapping<'_>> {
    maps.lines().find_map(|line| {
        // address perms offset dev inode pathname (the pathname may contain spaces)
        let mut rest = line;
        let mut fields = [""; 5];
        for field in fields.iter_mut() {
            rest = rest.trim_start();
            let end = rest.find(' ')?;
            *field = &rest[..end];
            rest = &rest[end..];
        }
        let path = rest.trim();
        let (path, deleted) = match path.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (path, false),
        };
        if !path.starts_with('/') {
            return None;
        }
        let name = Path::new(path).file_name()?.to_str()?;
        if !name.starts_with("libssl.so") {
            return None;
        }
        Some(Mapping {
            range: fields[0],
            inode: fields[4].parse().ok()?,
            path: Path::new(path),
            deleted,
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use palisade_common::DIRECTION_EGRESS;

    const MAPS: &str = "\
55d0c7a00000-55d0c7a01000 r--p 00000000 08:01 1234 /usr/bin/python3.11
7f52d8a00000-7f52d8a20000 r--p 00000000 08:01 5555 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f52d8b9f000-7f52d8bbb000 r--p 00000000 08:01 6666 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f52d8bbb000-7f52d8c16000 r-xp 0001c000 08:01 6666 /usr/lib/x86_64-linux-gnu/libssl.so.3
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]
";

    /// The write hooks for `writes`: (function, program) in order.
    fn write_hooks(writes: ExportedWrites) -> Vec<(&'static str, &'static str)> {
        hooks_for_writes(writes)
            .iter()
            .filter(|h| h.function.starts_with("SSL_write"))
            .map(|h| (h.function, h.program))
            .collect()
    }

    #[test]
    fn exported_writes_become_probes_with_their_calling_conventions() {
        // Before 3.2: the four exported functions at entry and return, and SSL_free.
        assert_eq!(hooks_for_writes(ExportedWrites::WRITE_AND_WRITE_EX).len(), 9);
        assert_eq!(
            write_hooks(ExportedWrites::WRITE_AND_WRITE_EX),
            [
                ("SSL_write", PROG_TLS_WRITE_ENTER),
                ("SSL_write", PROG_TLS_WRITE_EXIT),
                ("SSL_write_ex", PROG_TLS_WRITE_EX_ENTER),
                ("SSL_write_ex", PROG_TLS_WRITE_EXIT),
            ]
        );
        // OpenSSL 3.2+ (SSL_write_ex jumps to SSL_write_ex2): `written` is the fifth argument.
        let ex2 = ExportedWrites {
            write: true,
            write_ex: false,
            write_ex2: true,
        };
        assert_eq!(
            write_hooks(ex2),
            [
                ("SSL_write", PROG_TLS_WRITE_ENTER),
                ("SSL_write", PROG_TLS_WRITE_EXIT),
                ("SSL_write_ex2", PROG_TLS_WRITE_FLAGS_ENTER),
                ("SSL_write_ex2", PROG_TLS_WRITE_EXIT),
            ]
        );
        // A build that inlined SSL_write_ex2 into SSL_write_ex: both, which do not nest.
        let inlined = ExportedWrites {
            write_ex: true,
            ..ex2
        };
        assert_eq!(write_hooks(inlined).len(), 6);
        assert_eq!(hooks_for_writes(ex2).last().map(|h| h.function), Some("SSL_free"));
    }

    #[test]
    fn finds_the_libssl_mapping() {
        let m = libssl_mapping(MAPS).unwrap();
        assert_eq!(m.range, "7f52d8b9f000-7f52d8bbb000");
        assert_eq!(m.inode, 6666);
        assert_eq!(m.path, Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(!m.deleted);
    }

    #[test]
    fn deleted_and_spaces_and_absent() {
        let maps = "7f00-7f10 r-xp 00000000 08:01 77 /opt/my app/lib/libssl.so.1.1 (deleted)\n";
        let m = libssl_mapping(maps).unwrap();
        assert_eq!(m.path, Path::new("/opt/my app/lib/libssl.so.1.1"));
        assert!(m.deleted);
        assert_eq!(m.inode, 77);
        assert!(libssl_mapping("7f00-7f10 r-xp 00000000 08:01 77 /usr/lib/libsslx.so\n").is_none());
        assert!(libssl_mapping("7f00-7f10 r-xp 00000000 00:00 0 [vdso]\n").is_none());
        assert!(libssl_mapping("").is_none());
    }

    #[test]
    fn find_libssl_of_a_missing_process() {
        assert!(find_libssl(u32::MAX).is_none());
    }

    fn header(direction: u8, process: [u8; 16], connection: [u8; 16]) -> CaptureHeader {
        let (source_addr, dest_addr) = if direction == DIRECTION_INGRESS {
            (connection, process)
        } else {
            (process, connection)
        };
        CaptureHeader {
            timestamp_ns: 0,
            cgroup_id: 1,
            tcp_seq: 0,
            payload_len: 0,
            chunk_offset: 0,
            captured_len: 0,
            source_addr,
            dest_addr,
            source_port: 0,
            dest_port: 0,
            family: FAMILY_TLS,
            direction,
            tcp_flags: 0,
            _padding: [0],
        }
    }

    #[test]
    fn decodes_endpoints_in_both_directions() {
        let mut process = [0u8; 16];
        process[..4].copy_from_slice(&4321u32.to_le_bytes());
        let mut connection = [0u8; 16];
        connection[..8].copy_from_slice(&0x5555_1234_5678u64.to_le_bytes());
        for dir in [DIRECTION_INGRESS, DIRECTION_EGRESS] {
            let e = tls_endpoints(&header(dir, process, connection)).unwrap();
            assert_eq!(e.pid, 4321);
            assert_eq!(e.ssl, 0x5555_1234_5678);
        }
        let mut h = header(DIRECTION_INGRESS, process, connection);
        h.family = FAMILY_TLS_SESSION;
        assert_eq!(tls_endpoints(&h).map(|e| e.pid), Some(4321), "a session record");
        h.family = palisade_common::FAMILY_IPV4;
        assert!(tls_endpoints(&h).is_none());
    }

    #[test]
    fn counters_sum_every_field() {
        let a = CaptureCounters {
            records_emitted: 1,
            tls_entry_hits: 2,
            tls_return_hits: 3,
            tls_unmatched_returns: 4,
            ..Default::default()
        };
        let s = sum_counters([a, a].iter());
        assert_eq!(s.records_emitted, 2);
        assert_eq!(s.tls_entry_hits, 4);
        assert_eq!(s.tls_return_hits, 6);
        assert_eq!(s.tls_unmatched_returns, 8);
    }

    #[test]
    fn types_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<TlsProbes>();
        assert_send::<TlsError>();
        assert_send::<TlsAttachment>();
    }
}
