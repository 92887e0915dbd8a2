//! Loading the capture programs and attaching them to cgroup v2 directories.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{of_maps::ArrayOfMaps, Array as BpfArray, HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError},
    Ebpf, EbpfError,
};
use palisade_common::{
    BlockKey, BlockValue, CaptureCounters, CaptureFilter, CaptureFilterKey, IsolationValue,
    CAPTURE_RINGS_MAX_CPUS, CAPTURE_RING_BYTES, MAP_BLOCKED_SOURCES, MAP_CAPTURE_COUNTERS,
    MAP_CAPTURE_FILTERS, MAP_CAPTURE_FILTER_GENERATION, MAP_CAPTURE_RING, MAP_CAPTURE_RINGS,
    MAP_ENFORCE_ACTIVE, MAP_ISOLATED_WORKLOADS, MAP_ISOLATION_ALLOW, PROG_CAPTURE_EGRESS,
    PROG_CAPTURE_INGRESS, PROG_ENFORCE_EGRESS, PROG_ENFORCE_INGRESS,
};

use super::enforce::{self, AllowPrefix, Enforcement, EnforcementAttach};

use super::{error_chain, verifier_excerpt, with_permission_hint, CaptureError, CaptureRing};

/// The eBPF object built by `build.rs` from `node-agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/node-agent-ebpf"));

/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The links of one attached cgroup.
struct Attachment {
    cgroup_id: u64,
    ingress: aya::programs::cgroup_skb::CgroupSkbLinkId,
    egress: aya::programs::cgroup_skb::CgroupSkbLinkId,
}

/// The capture programs, loaded into the kernel, and the cgroups they are attached to.
///
/// Dropping it detaches every cgroup (the links are owned by this process, not pinned).
pub struct CaptureProbes {
    ebpf: Ebpf,
    attached: BTreeMap<PathBuf, Attachment>,
    /// Enforcement links (pinned), when loaded with a pin directory.
    enforcement: Option<Enforcement>,
    /// One ring per CPU, in `CAPTURE_RINGS` (empty if they could not be made: then every CPU
    /// writes into the shared ring).
    per_cpu_rings: Vec<MapData>,
}

impl std::fmt::Debug for CaptureProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureProbes")
            .field("attached", &self.attached.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CaptureProbes {
    /// Loads the embedded object (maps are created) and loads, but does not attach, both programs.
    pub fn load() -> Result<Self, CaptureError> {
        Self::load_pinned(None)
    }

    /// Like [`Self::load`]; with a bpffs directory, the enforcement maps are pinned there (and
    /// reused when an earlier agent pinned them), and enforcement links are pinned below it.
    pub fn load_pinned(pin_dir: Option<&Path>) -> Result<Self, CaptureError> {
        raise_memlock_limit();
        let mut loader = aya::EbpfLoader::new();
        const PINNED_MAPS: [&str; 4] = [
            MAP_BLOCKED_SOURCES,
            MAP_ENFORCE_ACTIVE,
            MAP_ISOLATED_WORKLOADS,
            MAP_ISOLATION_ALLOW,
        ];
        let mut pin_paths: Vec<PathBuf> = vec![];
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir).map_err(|e| CaptureError::Object {
                reason: format!("creating the pin directory {}: {e}", dir.display()),
            })?;
            pin_paths = PINNED_MAPS.iter().map(|name| dir.join(name)).collect();
        }
        for (name, path) in PINNED_MAPS.iter().zip(&pin_paths) {
            loader.map_pin_path(name, path.as_path());
        }
        let per_cpu_rings = match create_per_cpu_rings() {
            Ok(rings) => {
                // The shared ring is then an overflow: half the budget.
                loader.map_max_entries(MAP_CAPTURE_RING, SHARED_RING_BYTES_BESIDE_PER_CPU);
                rings
            }
            Err(reason) => {
                tracing::warn!(%reason, "no ring buffer per CPU; all CPUs share one capture ring");
                vec![]
            }
        };
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(object_error)?;
        for name in [
            PROG_CAPTURE_INGRESS,
            PROG_CAPTURE_EGRESS,
            PROG_ENFORCE_INGRESS,
            PROG_ENFORCE_EGRESS,
        ] {
            let prog = program_mut(&mut ebpf, name)?;
            prog.load().map_err(|e| program_load_error(name, e))?;
        }
        // Fail early, with a clear message, if the maps are not what user space expects.
        for name in [MAP_CAPTURE_RING, MAP_CAPTURE_COUNTERS] {
            if ebpf.map(name).is_none() {
                return Err(CaptureError::MissingInObject { kind: "map", name });
            }
        }
        let per_cpu_rings = insert_per_cpu_rings(&mut ebpf, per_cpu_rings);
        Ok(Self {
            ebpf,
            attached: BTreeMap::new(),
            enforcement: pin_dir.map(Enforcement::new),
            per_cpu_rings,
        })
    }

    fn enforcement(&mut self) -> Result<&mut Enforcement, CaptureError> {
        self.enforcement.as_mut().ok_or(CaptureError::Object {
            reason: "enforcement needs a bpffs pin directory (the agent's --bpf-pin-dir)".into(),
        })
    }

    /// Attaches (or adopts) the enforcement program on a protected pod's cgroup.
    pub fn enforce_cgroup(
        &mut self,
        pod_uid: &str,
        cgroup_dir: &Path,
        egress: bool,
    ) -> Result<EnforcementAttach, CaptureError> {
        let enforcement = self.enforcement.as_mut().ok_or(CaptureError::Object {
            reason: "enforcement needs a bpffs pin directory (the agent's --bpf-pin-dir)".into(),
        })?;
        enforcement.attach(&mut self.ebpf, pod_uid, cgroup_dir, egress)
    }

    /// Detaches the enforcement program from a pod.
    pub fn release_cgroup(&mut self, pod_uid: &str) {
        if let Ok(e) = self.enforcement() {
            e.detach(pod_uid);
        }
    }

    /// Pods with enforcement links pinned by an earlier agent and not adopted by this one.
    pub fn pinned_enforcement_pods(&mut self) -> Vec<String> {
        self.enforcement().map(|e| e.pinned_pods()).unwrap_or_default()
    }

    pub fn block(&mut self, key: BlockKey, expires_ns: u64) -> Result<(), CaptureError> {
        self.enforcement()?;
        enforce::block(&mut self.ebpf, key, expires_ns)
    }

    pub fn unblock(&mut self, key: &BlockKey) -> Result<u64, CaptureError> {
        enforce::unblock(&mut self.ebpf, key)
    }

    /// The blocked-sources map, as the kernel holds it.
    pub fn blocks(&mut self) -> Result<Vec<(BlockKey, BlockValue)>, CaptureError> {
        enforce::blocks(&mut self.ebpf)
    }

    /// Isolates a pod cgroup (see [`enforce::isolate`]).
    pub fn isolate(
        &mut self,
        cgroup_id: u64,
        expires_ns: u64,
        flags: u64,
        cause: [u8; 16],
        allow: &[AllowPrefix],
        remove: &[AllowPrefix],
    ) -> Result<(), CaptureError> {
        self.enforcement()?;
        enforce::isolate(&mut self.ebpf, cgroup_id, expires_ns, flags, cause, allow, remove)
    }

    /// Ends a pod cgroup's isolation; its last value.
    pub fn unisolate(
        &mut self,
        cgroup_id: u64,
        allow: &[AllowPrefix],
    ) -> Result<Option<IsolationValue>, CaptureError> {
        enforce::unisolate(&mut self.ebpf, cgroup_id, allow)
    }

    /// The isolated-workloads map, as the kernel holds it.
    pub fn isolations(&mut self) -> Result<Vec<(u64, IsolationValue)>, CaptureError> {
        enforce::isolations(&mut self.ebpf)
    }

    /// Attaches ingress and egress capture to a cgroup v2 directory and returns its cgroup id
    /// (the inode of the directory, as `bpf_skb_cgroup_id` reports it).
    ///
    /// Idempotent per path: attaching an attached path again returns its id and changes nothing.
    pub fn attach_cgroup(&mut self, cgroup_dir: &Path) -> Result<u64, CaptureError> {
        let key = normalize(cgroup_dir);
        if let Some(att) = self.attached.get(&key) {
            return Ok(att.cgroup_id);
        }
        let open_err = |e: io::Error| CaptureError::CgroupOpen {
            path: key.clone(),
            reason: e.to_string(),
        };
        let dir = File::open(&key).map_err(open_err)?;
        let meta = dir.metadata().map_err(open_err)?;
        if !meta.is_dir() {
            return Err(CaptureError::CgroupOpen {
                path: key,
                reason: "not a directory".into(),
            });
        }
        let magic = fs_magic(&dir).map_err(open_err)?;
        if magic != CGROUP2_SUPER_MAGIC {
            return Err(CaptureError::NotCgroup2 { path: key, magic });
        }
        let cgroup_id = meta.ino();

        let ingress = attach_one(&mut self.ebpf, PROG_CAPTURE_INGRESS, &dir, &key)?;
        let egress = match attach_one(&mut self.ebpf, PROG_CAPTURE_EGRESS, &dir, &key) {
            Ok(link) => link,
            Err(e) => {
                // Roll back so that the cgroup is either fully captured or not at all.
                if let Ok(prog) = program_mut(&mut self.ebpf, PROG_CAPTURE_INGRESS) {
                    let _ = prog.detach(ingress);
                }
                return Err(e);
            }
        };
        self.attached.insert(
            key,
            Attachment {
                cgroup_id,
                ingress,
                egress,
            },
        );
        Ok(cgroup_id)
    }

    /// Detaches both programs from that cgroup; a path that is not attached is a no-op.
    ///
    /// Works after the cgroup directory was removed (the links are found by path).
    pub fn detach_cgroup(&mut self, cgroup_dir: &Path) -> Result<(), CaptureError> {
        let key = normalize(cgroup_dir);
        let Some(att) = self.attached.remove(&key) else {
            return Ok(());
        };
        let mut first_err = None;
        for (name, link) in [
            (PROG_CAPTURE_INGRESS, att.ingress),
            (PROG_CAPTURE_EGRESS, att.egress),
        ] {
            let res = program_mut(&mut self.ebpf, name).and_then(|prog| {
                prog.detach(link).map_err(|e| CaptureError::Detach {
                    program: name,
                    path: key.clone(),
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

    /// Sets (or with `None` removes) one entry of what the capture programs take from the
    /// sockets of a cgroup (see [`CaptureFilter`]).
    pub fn set_filter(
        &mut self,
        key: CaptureFilterKey,
        filter: Option<&CaptureFilter>,
    ) -> Result<(), CaptureError> {
        let map_err = map_error(MAP_CAPTURE_FILTERS);
        let mut filters: BpfHashMap<&mut MapData, CaptureFilterKey, CaptureFilter> =
            typed_map(&mut self.ebpf, MAP_CAPTURE_FILTERS)?;
        match filter {
            Some(f) => filters.insert(key, *f, 0).map_err(map_err)?,
            None => match filters.remove(&key) {
                // Already gone is what was asked.
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                other => other.map_err(map_err)?,
            },
        }
        // The programs' per-CPU copies of the filters are stale now.
        let map_err = map_error(MAP_CAPTURE_FILTER_GENERATION);
        let mut generation: BpfArray<&mut MapData, u64> =
            typed_map(&mut self.ebpf, MAP_CAPTURE_FILTER_GENERATION)?;
        let next = generation.get(&0, 0).map_err(map_err)?.wrapping_add(1);
        generation.set(0, next, 0).map_err(map_err)
    }

    /// Paths currently attached (normalized: no trailing slash, no `.` components).
    pub fn attached_cgroups(&self) -> Vec<PathBuf> {
        self.attached.keys().cloned().collect()
    }

    /// Sum of the per-CPU counters.
    pub fn counters(&self) -> Result<CaptureCounters, CaptureError> {
        let map = self
            .ebpf
            .map(MAP_CAPTURE_COUNTERS)
            .ok_or(CaptureError::MissingInObject {
                kind: "map",
                name: MAP_CAPTURE_COUNTERS,
            })?;
        let map_err = |e: &aya::maps::MapError| CaptureError::Map {
            map: MAP_CAPTURE_COUNTERS,
            reason: error_chain(e),
        };
        let array: PerCpuArray<&MapData, CaptureCounters> =
            PerCpuArray::try_from(map).map_err(|e| map_err(&e))?;
        let per_cpu = array.get(&0, 0).map_err(|e| map_err(&e))?;
        let mut sum = CaptureCounters::default();
        per_cpu.iter().for_each(|c| sum.add(c));
        Ok(sum)
    }

    /// Takes the ring buffer reader out; a second call returns [`CaptureError::RingTaken`].
    pub fn take_ring(&mut self) -> Result<CaptureRing, CaptureError> {
        let map = self
            .ebpf
            .take_map(MAP_CAPTURE_RING)
            .ok_or(CaptureError::RingTaken)?;
        let map_err = |reason: String| CaptureError::Map {
            map: MAP_CAPTURE_RING,
            reason,
        };
        let shared = super::ring::ring_map_data(map).map_err(map_err)?;
        let per_cpu = std::mem::take(&mut self.per_cpu_rings);
        // The array the rings are in, for the TLS programs to share: a second handle of it.
        let outer = match (per_cpu.is_empty(), self.ebpf.map(MAP_CAPTURE_RINGS)) {
            (false, Some(aya::maps::Map::ArrayOfMaps(data))) => {
                let fd = data
                    .fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| map_err(format!("dup of {MAP_CAPTURE_RINGS}: {e}")))?;
                Some(MapData::from_fd(fd).map_err(|e| map_err(error_chain(&e)))?)
            }
            _ => None,
        };
        CaptureRing::new(shared, per_cpu, outer)
            .map_err(|e| map_err(format!("mapping the capture rings: {e}")))
    }
}

/// Size of the shared ring when the CPUs have rings of their own: it then carries what a CPU's
/// full ring cannot take (and the records of CPUs numbered past `CAPTURE_RINGS_MAX_CPUS` or
/// whose ring could not be put in). With the per-CPU rings at 16 MiB on 2 CPUs, one CPU sending
/// 64 KiB responses at full speed has 32 MiB, as much as the single ring held before; without
/// this room, the 64 KiB body benchmark lost records.
const SHARED_RING_BYTES_BESIDE_PER_CPU: u32 = 16 * 1024 * 1024;
/// Least and most bytes of one CPU's ring.
const PER_CPU_RING_BYTES: std::ops::RangeInclusive<u32> = (2 * 1024 * 1024)..=(16 * 1024 * 1024);

/// The size of each CPU's ring: the shared ring's budget split between `cpus`, rounded down to a
/// power of two, within [`PER_CPU_RING_BYTES`].
fn per_cpu_ring_bytes(cpus: usize) -> u32 {
    let share = CAPTURE_RING_BYTES / u32::try_from(cpus.max(1)).unwrap_or(u32::MAX);
    let pow2 = if share == 0 { 1 } else { 1 << share.ilog2() };
    pow2.clamp(*PER_CPU_RING_BYTES.start(), *PER_CPU_RING_BYTES.end())
}

/// One ring buffer per possible CPU (up to `CAPTURE_RINGS_MAX_CPUS`), index = CPU number.
fn create_per_cpu_rings() -> Result<Vec<MapData>, String> {
    let cpus = aya::util::nr_cpus().map_err(|(file, e)| format!("reading {file}: {e}"))?;
    let cpus = cpus.min(CAPTURE_RINGS_MAX_CPUS);
    let bytes = per_cpu_ring_bytes(cpus);
    (0..cpus)
        .map(|cpu| {
            let def = aya_obj::Map::new_from_params(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                0,
                0,
                bytes,
                0,
            );
            MapData::create(def, &format!("capture_cpu{cpu}"), None)
                .map_err(|e| format!("creating the ring of CPU {cpu}: {}", error_chain(&e)))
        })
        .collect()
}

/// Puts each CPU's ring into `CAPTURE_RINGS`, in CPU order; returns the rings put in. If a slot
/// cannot be filled, that CPU and the ones after it write into the shared ring (its ring is
/// dropped: no program holds it).
fn insert_per_cpu_rings(ebpf: &mut Ebpf, mut rings: Vec<MapData>) -> Vec<MapData> {
    if rings.is_empty() {
        return rings;
    }
    let mut inserted = 0;
    let result = ebpf
        .map_mut(MAP_CAPTURE_RINGS)
        .ok_or_else(|| format!("the object has no {MAP_CAPTURE_RINGS} map"))
        .and_then(|map| {
            let mut outer: ArrayOfMaps<&mut MapData, MapData> =
                map.try_into().map_err(|e: aya::maps::MapError| error_chain(&e))?;
            for (cpu, ring) in rings.iter().enumerate() {
                outer
                    .set(cpu as u32, ring, 0)
                    .map_err(|e| format!("CPU {cpu}: {}", error_chain(&e)))?;
                inserted += 1;
            }
            Ok(())
        });
    if let Err(reason) = result {
        tracing::warn!(
            %reason,
            with_own_ring = inserted,
            "not every CPU got its capture ring; the others share one"
        );
    }
    rings.truncate(inserted);
    if !rings.is_empty() {
        tracing::info!(rings = rings.len(), "capture rings: one per CPU");
    }
    rings
}

/// How a failed operation on the map `name` is reported.
fn map_error(name: &'static str) -> impl Fn(MapError) -> CaptureError + Copy {
    move |e| CaptureError::Map {
        map: name,
        reason: error_chain(&e),
    }
}

/// The object's map `name` as the typed map `M` (a hash map, an array, ...), or why not.
fn typed_map<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, CaptureError>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(CaptureError::MissingInObject { kind: "map", name })?;
    M::try_from(map).map_err(map_error(name))
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSkb, CaptureError> {
    ebpf.program_mut(name)
        .ok_or(CaptureError::MissingInObject {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|_: ProgramError| CaptureError::MissingInObject {
            kind: "cgroup_skb program",
            name,
        })
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    dir: &File,
    path: &Path,
) -> Result<aya::programs::cgroup_skb::CgroupSkbLinkId, CaptureError> {
    let (attach_type, direction) = if name == PROG_CAPTURE_INGRESS {
        (CgroupSkbAttachType::Ingress, "ingress")
    } else {
        (CgroupSkbAttachType::Egress, "egress")
    };
    let prog = program_mut(ebpf, name)?;
    prog.attach(dir, attach_type, CgroupAttachMode::Single)
        .map_err(|e| CaptureError::Attach {
            program: name,
            direction,
            path: path.to_path_buf(),
            reason: program_error_reason(&e),
        })
}

/// The errno of a program error, if it carries one.
fn program_io_error(e: &ProgramError) -> Option<&io::Error> {
    match e {
        ProgramError::LoadError { io_error, .. } => Some(io_error),
        ProgramError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    }
}

fn program_error_reason(e: &ProgramError) -> String {
    with_permission_hint(error_chain(e), program_io_error(e))
}

fn program_load_error(program: &'static str, e: ProgramError) -> CaptureError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => CaptureError::ProgramLoad {
            program,
            reason: with_permission_hint(io_error.to_string(), Some(&io_error)),
            verifier_log: verifier_excerpt(&verifier_log.to_string()),
        },
        other => CaptureError::ProgramLoad {
            program,
            reason: program_error_reason(&other),
            verifier_log: String::new(),
        },
    }
}

fn object_error(e: EbpfError) -> CaptureError {
    let reason = match &e {
        EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) => with_permission_hint(
            format!("BPF_MAP_CREATE for map `{name}` failed: {io_error}"),
            Some(io_error),
        ),
        EbpfError::ProgramError(pe) => program_error_reason(pe),
        EbpfError::BtfError(aya::BtfError::LoadError {
            io_error,
            verifier_log,
        }) => {
            let log = verifier_excerpt(&verifier_log.to_string());
            let mut s = with_permission_hint(
                format!("BPF_BTF_LOAD of the object's BTF failed: {io_error}"),
                Some(io_error),
            );
            if !log.is_empty() {
                s.push_str("; log (tail): ");
                s.push_str(&log);
            }
            s
        }
        other => error_chain(other),
    };
    CaptureError::Object { reason }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (the ring buffer alone is 32 MiB).
/// Best effort: newer kernels use memory cgroups and ignore the limit.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialized struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK (only matters on kernels before 5.11)"
        );
    }
}

/// `f_type` of the file system holding `file`.
fn fs_magic(file: &File) -> io::Result<u64> {
    // SAFETY: statfs is plain data; fstatfs fills it for a valid open fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as u64)
}

/// Lexical normalization so that `/a/b`, `/a/b/` and `/a/./b` are one key.
fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_ring_takes_a_power_of_two_share_within_bounds() {
        let mib = 1024 * 1024;
        // 32 MiB split while that leaves at least 2 MiB each, at most 16 MiB each.
        for (cpus, each) in [
            (1, 16),
            (2, 16),
            (3, 8),
            (4, 8),
            (8, 4),
            (16, 2),
            (64, 2),
            (4096, 2),
        ] {
            assert_eq!(per_cpu_ring_bytes(cpus), each * mib, "{cpus} CPUs");
        }
        assert_eq!(per_cpu_ring_bytes(0), 16 * mib);
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(Path::new("/a/b/")), PathBuf::from("/a/b"));
        assert_eq!(normalize(Path::new("/a/./b")), PathBuf::from("/a/b"));
        assert_eq!(normalize(Path::new("/a//b")), PathBuf::from("/a/b"));
    }

    #[test]
    fn types_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<CaptureProbes>();
        assert_send::<CaptureRing>();
        assert_send::<CaptureError>();
    }
}
