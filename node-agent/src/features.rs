//! What this node's kernel offers Palisade, probed at start-up and reported per node.
//!
//! Nothing here panics: every probe ends in a [`FeatureProbe`] whose `reason` says, in words a
//! platform engineer can act on, what was found or why the feature is not available.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
/// `TRACEFS_MAGIC` from linux/magic.h.
const TRACEFS_MAGIC: u64 = 0x7472_6163;
/// `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";
const MOUNTINFO: &str = "/proc/self/mountinfo";
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// One probed feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureProbe {
    /// Short stable name: `btf`, `cgroup2`, `bpffs`, `tracefs`, `cgroup_skb`, `sock_ops`,
    /// `tracepoint`, `uprobe`, `kprobe`, `fentry`, `ring_buffer`.
    pub name: String,
    pub available: bool,
    /// Why it is not available, or what was found and used.
    pub reason: String,
}

/// Everything [`probe_node_features`] found.
#[derive(Clone, Debug, Default)]
pub struct NodeFeatures {
    pub probes: Vec<FeatureProbe>,
    /// Mount point of the cgroup v2 (unified) hierarchy, where capture programs attach.
    pub cgroup2_root: Option<PathBuf>,
    /// The BPF file system, when it is mounted at the requested path.
    pub bpffs: Option<PathBuf>,
}

impl NodeFeatures {
    /// The probes that reported the feature as unavailable.
    pub fn missing(&self) -> impl Iterator<Item = &FeatureProbe> + '_ {
        self.probes.iter().filter(|p| !p.available)
    }

    /// The probe with that name.
    pub fn get(&self, name: &str) -> Option<&FeatureProbe> {
        self.probes.iter().find(|p| p.name == name)
    }

    /// Whether the named feature was probed and found available.
    pub fn is_available(&self, name: &str) -> bool {
        self.get(name).is_some_and(|p| p.available)
    }
}

fn probe(name: &str, available: bool, reason: impl Into<String>) -> FeatureProbe {
    FeatureProbe {
        name: name.to_owned(),
        available,
        reason: reason.into(),
    }
}

/// Probes the node. `bpffs` is where the BPF file system is expected (usually `/sys/fs/bpf`);
/// with `mount_if_missing`, the BPF file system and tracefs are mounted when absent.
pub fn probe_node_features(bpffs: &Path, mount_if_missing: bool) -> NodeFeatures {
    let mut out = NodeFeatures::default();

    out.probes.push(probe_btf());

    let (cgroup_probe, cgroup2_root) = probe_cgroup2();
    out.probes.push(cgroup_probe);
    out.cgroup2_root = cgroup2_root;

    let bpffs_probe = probe_special_fs(
        "bpffs",
        "BPF file system",
        bpffs,
        BPF_FS_MAGIC,
        "bpf",
        "bpf",
        mount_if_missing,
    );
    if bpffs_probe.available {
        out.bpffs = Some(bpffs.to_path_buf());
    }
    out.probes.push(bpffs_probe);

    let tracefs = Path::new(TRACEFS);
    let tracefs_probe = probe_special_fs(
        "tracefs",
        "tracefs",
        tracefs,
        TRACEFS_MAGIC,
        "tracefs",
        "nodev",
        mount_if_missing,
    );
    let tracefs_ok = tracefs_probe.available;
    out.probes.push(tracefs_probe);

    out.probes.push(probe_program(
        "cgroup_skb",
        ProgramType::CgroupSkb,
        "per-pod HTTP capture on the pod's cgroup",
    ));
    out.probes.push(probe_program(
        "sock_ops",
        ProgramType::SockOps,
        "connection tracking on the pod's cgroup",
    ));

    let mut tp = probe_program(
        "tracepoint",
        ProgramType::TracePoint,
        "kernel tracepoints (process and socket events)",
    );
    if tp.available && !tracefs_ok {
        tp.available = false;
        tp.reason = format!(
            "the tracepoint program type loads, but tracepoints are attached through tracefs, \
             which is not mounted at {TRACEFS}"
        );
    }
    out.probes.push(tp);

    // uprobes and kprobes share BPF_PROG_TYPE_KPROBE; what differs is the perf PMU.
    let kprobe_type = is_program_supported(ProgramType::KProbe);
    out.probes.push(probe_uprobe(&kprobe_type));
    out.probes.push(probe_kprobe(&kprobe_type, tracefs_ok));

    out.probes.push(probe_fentry());
    out.probes.push(probe_map(
        "ring_buffer",
        MapType::RingBuf,
        "BPF ring buffer (kernel 5.8+), carries captured payloads to the agent",
    ));
    out
}

fn probe_btf() -> FeatureProbe {
    match fs::metadata(BTF_VMLINUX) {
        Ok(m) if m.len() > 0 => probe(
            "btf",
            true,
            format!("kernel BTF at {BTF_VMLINUX} ({} KiB)", m.len() / 1024),
        ),
        Ok(_) => probe("btf", false, format!("{BTF_VMLINUX} is empty")),
        Err(e) => probe(
            "btf",
            false,
            format!(
                "no kernel BTF at {BTF_VMLINUX} ({e}); the kernel was built without \
                 CONFIG_DEBUG_INFO_BTF: BTF-typed programs (tp_btf, fentry) cannot load"
            ),
        ),
    }
}

fn probe_cgroup2() -> (FeatureProbe, Option<PathBuf>) {
    let text = match fs::read_to_string(MOUNTINFO) {
        Ok(t) => t,
        Err(e) => {
            return (
                probe("cgroup2", false, format!("cannot read {MOUNTINFO}: {e}")),
                None,
            )
        }
    };
    match cgroup2_root_from_mountinfo(&text) {
        Some(root) => {
            let hybrid = root != Path::new("/sys/fs/cgroup");
            let reason = if hybrid {
                format!(
                    "cgroup v2 hierarchy mounted at {} (hybrid cgroup v1/v2 layout); capture \
                     attaches to pod directories there",
                    root.display()
                )
            } else {
                format!("cgroup v2 hierarchy mounted at {}", root.display())
            };
            (probe("cgroup2", true, reason), Some(root))
        }
        None => (
            probe(
                "cgroup2",
                false,
                format!(
                    "no cgroup2 mount in {MOUNTINFO}: the node runs cgroup v1 only, and cgroup_skb \
                     capture needs the unified (v2) hierarchy; mount it (mount -t cgroup2 none \
                     /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1"
                ),
            ),
            None,
        ),
    }
}

/// One line of /proc/self/mountinfo, the fields the agent needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfoEntry {
    /// Path of the mount's root inside its file system (field 4).
    pub root: PathBuf,
    /// Where it is mounted (field 5), with octal escapes decoded.
    pub mount_point: PathBuf,
    /// File-system type (first field after the ` - ` separator).
    pub fs_type: String,
    /// Mount source (second field after the separator).
    pub source: String,
}

/// Parses /proc/self/mountinfo; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfoEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfoEntry> {
    let mut fields = line.split(' ');
    let _mount_id = fields.next()?;
    let _parent_id = fields.next()?;
    let _dev = fields.next()?;
    let root = fields.next()?;
    let mount_point = fields.next()?;
    // Mount options, then optional fields up to the "-" separator.
    let mut found_sep = false;
    for f in fields.by_ref() {
        if f == "-" {
            found_sep = true;
            break;
        }
    }
    if !found_sep {
        return None;
    }
    let fs_type = fields.next()?;
    let source = fields.next().unwrap_or("");
    if root.is_empty() || mount_point.is_empty() || fs_type.is_empty() {
        return None;
    }
    Some(MountInfoEntry {
        root: PathBuf::from(unescape_octal(root)),
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fs_type: fs_type.to_owned(),
        source: unescape_octal(source),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let (Some(b'\\'), Some(digits)) = (bytes.get(i), bytes.get(i + 1..i + 4)) {
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        if let Some(b) = bytes.get(i) {
            out.push(*b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 mount point: the first cgroup2 mount of the whole hierarchy (root `/`), else
/// the first cgroup2 mount at all (a container sees only its own subtree).
pub fn cgroup2_root_from_mountinfo(text: &str) -> Option<PathBuf> {
    let mounts: Vec<MountInfoEntry> = parse_mountinfo(text)
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2")
        .collect();
    mounts
        .iter()
        .find(|m| m.root == Path::new("/"))
        .or_else(|| mounts.first())
        .map(|m| m.mount_point.clone())
}

/// `f_type` of the file system at `path`.
fn fs_magic(path: &Path) -> io::Result<u64> {
    let c = path_cstring(path)?;
    // SAFETY: statfs is plain data; statfs() fills it given a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as u64)
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn mount_fs(source: &str, target: &Path, fs_type: &str) -> io::Result<()> {
    let target_c = path_cstring(target)?;
    let source_c =
        CString::new(source).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in source"))?;
    let type_c =
        CString::new(fs_type).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in type"))?;
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let ret = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            type_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks that `path` holds a file system with `magic`; mounts it when missing and allowed.
fn probe_special_fs(
    name: &str,
    label: &str,
    path: &Path,
    magic: u64,
    fs_type: &str,
    source: &str,
    mount_if_missing: bool,
) -> FeatureProbe {
    let shown = path.display();
    let found = match fs_magic(path) {
        Ok(m) if m == magic => return probe(name, true, format!("{label} mounted at {shown}")),
        Ok(_) => format!("{shown} is not a {label} mount"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => format!("{shown} does not exist"),
        Err(e) => format!("cannot inspect {shown}: {e}"),
    };
    if !mount_if_missing {
        return probe(
            name,
            false,
            format!("{found}; mounting was not allowed (mount -t {fs_type} {source} {shown})"),
        );
    }
    if let Err(e) = fs::create_dir_all(path) {
        return probe(
            name,
            false,
            format!("{found}, and creating the directory failed: {e}"),
        );
    }
    match mount_fs(source, path, fs_type) {
        Ok(()) => match fs_magic(path) {
            Ok(m) if m == magic => probe(
                name,
                true,
                format!("{label} was not mounted; mounted it at {shown}"),
            ),
            Ok(m) => probe(
                name,
                false,
                format!("mounted {fs_type} at {shown}, but it reports file system magic {m:#x}"),
            ),
            Err(e) => probe(
                name,
                false,
                format!("mounted {fs_type} at {shown}, but cannot inspect it: {e}"),
            ),
        },
        Err(e) => {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (the agent needs CAP_SYS_ADMIN in the host mount namespace, or mount it \
                     on the node / as a hostPath volume)"
                }
                Some(libc::ENODEV) => " (the kernel does not support this file system)",
                _ => "",
            };
            probe(
                name,
                false,
                format!("{found}, and mounting {fs_type} there failed: {e}{hint}"),
            )
        }
    }
}

fn permission_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            if has_bpf_capabilities() {
                " (refused although the agent holds CAP_BPF or CAP_SYS_ADMIN: a platform policy \
                 such as an LSM, kernel lockdown or seccomp blocks it)"
            } else {
                " (the agent lacks CAP_BPF/CAP_PERFMON/CAP_NET_ADMIN or CAP_SYS_ADMIN, or \
                 seccomp/an LSM blocks bpf())"
            }
        }
        _ => "",
    }
}

/// CAP_SYS_ADMIN and CAP_BPF bit numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Whether this process's effective set holds CAP_BPF or CAP_SYS_ADMIN.
fn has_bpf_capabilities() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| cap_eff_from_status(&s))
        .is_some_and(|eff| eff & (1 << CAP_SYS_ADMIN) != 0 || eff & (1 << CAP_BPF) != 0)
}

/// The `CapEff:` mask of /proc/<pid>/status.
fn cap_eff_from_status(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The errno behind an aya probing error, with the chain in words.
fn describe_probe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut hint = "";
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            hint = permission_hint(io);
        }
        source = s.source();
    }
    format!("{text}{hint}")
}

fn probe_program(name: &str, ty: ProgramType, purpose: &str) -> FeatureProbe {
    match is_program_supported(ty) {
        Ok(true) => probe(
            name,
            true,
            format!("the kernel loads {name} programs ({purpose})"),
        ),
        Ok(false) => probe(
            name,
            false,
            format!("the kernel does not know the {name} program type ({purpose})"),
        ),
        Err(e) => probe(
            name,
            false,
            format!(
                "loading a trivial {name} program was refused: {}",
                describe_probe_error(&e)
            ),
        ),
    }
}

fn probe_map(name: &str, ty: MapType, purpose: &str) -> FeatureProbe {
    match is_map_supported(ty) {
        Ok(true) => probe(name, true, format!("supported: {purpose}")),
        Ok(false) => probe(name, false, format!("not supported by this kernel: {purpose}")),
        Err(e) => probe(
            name,
            false,
            format!("creating a test map was refused: {}", describe_probe_error(&e)),
        ),
    }
}

fn pmu_type(dir: &str) -> Option<String> {
    fs::read_to_string(Path::new(dir).join("type"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn kprobe_type_problem(kprobe_type: &Result<bool, aya::programs::ProgramError>) -> Option<String> {
    match kprobe_type {
        Ok(true) => None,
        Ok(false) => Some("the kernel does not know the kprobe program type".to_owned()),
        Err(e) => Some(format!(
            "loading a trivial kprobe-type program was refused: {}",
            describe_probe_error(e)
        )),
    }
}

fn probe_uprobe(kprobe_type: &Result<bool, aya::programs::ProgramError>) -> FeatureProbe {
    if let Some(problem) = kprobe_type_problem(kprobe_type) {
        return probe("uprobe", false, format!("{problem} (uprobes use it)"));
    }
    match pmu_type(UPROBE_PMU) {
        Some(t) => probe(
            "uprobe",
            true,
            format!("uprobe perf PMU at {UPROBE_PMU} (type {t}): TLS plaintext capture possible"),
        ),
        None => probe(
            "uprobe",
            false,
            format!(
                "no uprobe perf PMU at {UPROBE_PMU}: the kernel was built without \
                 CONFIG_UPROBE_EVENTS; TLS plaintext capture is unavailable"
            ),
        ),
    }
}

fn probe_kprobe(kprobe_type: &Result<bool, aya::programs::ProgramError>, tracefs_ok: bool) -> FeatureProbe {
    if let Some(problem) = kprobe_type_problem(kprobe_type) {
        return probe("kprobe", false, problem);
    }
    if let Some(t) = pmu_type(KPROBE_PMU) {
        return probe(
            "kprobe",
            true,
            format!("kprobe perf PMU at {KPROBE_PMU} (type {t})"),
        );
    }
    let events = Path::new(TRACEFS).join("kprobe_events");
    if tracefs_ok && events.exists() {
        return probe("kprobe", true, format!("kprobes through {}", events.display()));
    }
    probe(
        "kprobe",
        false,
        format!(
            "no kprobe perf PMU at {KPROBE_PMU}{}: the kernel was built without CONFIG_KPROBES \
             (Palisade does not need kprobes; it uses tracepoints, sock_ops and cgroup_skb)",
            if tracefs_ok {
                format!(" and no {}", events.display())
            } else {
                String::new()
            }
        ),
    )
}

fn probe_fentry() -> FeatureProbe {
    match is_program_supported(ProgramType::Tracing) {
        Ok(true) => probe(
            "fentry",
            true,
            "the kernel loads and attaches fentry/fexit (BPF trampoline) programs",
        ),
        Ok(false) => probe(
            "fentry",
            false,
            "the kernel cannot load or attach fentry/fexit programs (no BPF trampolines, or no \
             kernel BTF)",
        ),
        Err(e) => probe(
            "fentry",
            false,
            format!(
                "loading a trivial fentry program was refused: {}; fentry/fexit (BPF \
                 trampolines) are unavailable here, Palisade does without them",
                describe_probe_error(&e)
            ),
        ),
    }
}

/// Whether `path` is on the cgroup v2 file system.
pub fn is_cgroup2_dir(path: &Path) -> bool {
    matches!(fs_magic(path), Ok(m) if m == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
";

    #[test]
    fn finds_hybrid_cgroup2_root() {
        assert_eq!(
            cgroup2_root_from_mountinfo(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_unified_cgroup2_root() {
        let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            cgroup2_root_from_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn prefers_the_whole_hierarchy() {
        let text = "\
50 40 0:26 /kubepods/pod1 /host/cg rw - cgroup2 cgroup2 rw
51 40 0:26 / /sys/fs/cgroup rw shared:4 master:1 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_root_from_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn container_subtree_is_used_when_alone() {
        let text = "50 40 0:26 /../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root_from_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2() {
        let text = "42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_root_from_mountinfo(text), None);
        assert_eq!(cgroup2_root_from_mountinfo(""), None);
    }

    #[test]
    fn optional_fields_and_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt with space"));
        assert_eq!(m[0].root, PathBuf::from("/mnt1"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].source, "/dev/root");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text =
            "garbage\n1 2 3\n1 2 3 / /x rw no-separator here\n\n41 31 0:38 / /u rw - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, PathBuf::from("/u"));
        assert_eq!(unescape_octal("a\\"), "a\\");
        assert_eq!(unescape_octal("a\\9"), "a\\9");
        assert_eq!(unescape_octal("\\134x"), "\\x");
    }

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(cap_eff_from_status(status), Some(0x1ff_ffff_ffff));
        assert_eq!(cap_eff_from_status("Name: x\n"), None);
    }

    #[test]
    fn this_machine_does_not_panic() {
        let f = probe_node_features(Path::new("/nonexistent/palisade-bpffs-test"), false);
        assert!(f.get("btf").is_some());
        assert!(f.get("bpffs").is_some_and(|p| !p.available));
        assert!(f.bpffs.is_none());
        for p in &f.probes {
            assert!(!p.reason.is_empty(), "{p:?}");
        }
    }
}
