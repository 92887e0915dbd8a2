//! Enforcement in the kernel: the `palisade_enforce_ingress` and `palisade_enforce_egress`
//! programs on protected pods' cgroups drop packets from blocked sources and new connections of
//! isolated pods (see `node-agent-ebpf`).
//!
//! Crash safety: the maps (`BLOCKED_SOURCES`, `ISOLATED_WORKLOADS`, `ISOLATION_ALLOW`,
//! `ENFORCE_ACTIVE`) and the programs' links are pinned
//! under the agent's bpffs directory. When the agent dies, the links stay attached and the blocks
//! stay enforced; the kernel itself stops dropping when a block's expiry passes. A restarted
//! agent loads the object with the same pin paths (so it opens the same maps), adopts each pinned
//! link instead of attaching a second copy (cgroup links are multi-attach), and continues the
//! expiries from the map.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, HashMap as BpfHashMap, MapData,
    },
    programs::{links::FdLink, links::PinnedLink, CgroupAttachMode, CgroupSkbAttachType},
    Ebpf,
};
use palisade_common::{
    BlockKey, BlockValue, IsolationAllowKey, IsolationValue, ENFORCE_BLOCKS, ENFORCE_ISOLATION,
    MAP_BLOCKED_SOURCES, MAP_ENFORCE_ACTIVE, MAP_ISOLATED_WORKLOADS, MAP_ISOLATION_ALLOW,
    PROG_ENFORCE_EGRESS, PROG_ENFORCE_INGRESS,
};

/// An enforcement program and the pin name prefix of its links.
type Program = (&'static str, CgroupSkbAttachType, &'static str, &'static str);

/// On every protected pod: blocks and inbound isolation.
const INGRESS: Program = (
    PROG_ENFORCE_INGRESS,
    CgroupSkbAttachType::Ingress,
    "ingress",
    "enforce-ingress-",
);
/// Only on pods whose isolation may deny egress: every outbound packet pays for it.
const EGRESS: Program = (
    PROG_ENFORCE_EGRESS,
    CgroupSkbAttachType::Egress,
    "egress",
    "enforce-egress-",
);
const PROGRAMS: [Program; 2] = [INGRESS, EGRESS];

/// A protected pod's pinned links.
#[derive(Debug)]
struct PodLinks {
    ingress: PinnedLink,
    egress: Option<PinnedLink>,
}

use super::{error_chain, CaptureError};

/// The pinned enforcement links of this agent, by pod UID.
#[derive(Debug)]
pub struct Enforcement {
    pin_dir: PathBuf,
    links: BTreeMap<String, PodLinks>,
}

/// Whether a pod's enforcement program was attached now or found attached by an earlier agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnforcementAttach {
    Attached,
    Adopted,
}

impl Enforcement {
    pub fn new(pin_dir: &Path) -> Self {
        Enforcement {
            pin_dir: pin_dir.to_path_buf(),
            links: BTreeMap::new(),
        }
    }

    fn link_path(&self, prefix: &str, pod_uid: &str) -> PathBuf {
        self.pin_dir.join("links").join(format!("{prefix}{pod_uid}"))
    }

    /// Makes sure the ingress enforcement program is attached to the pod's cgroup, and the
    /// egress one exactly when `egress` (an isolation that may deny egress): adopts the links
    /// pinned by an earlier agent, or attaches and pins new ones, and unpins an egress link no
    /// longer needed. `Adopted` when the ingress link was found pinned.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        pod_uid: &str,
        cgroup_dir: &Path,
        egress: bool,
    ) -> Result<EnforcementAttach, CaptureError> {
        let mut how = EnforcementAttach::Attached;
        if !self.links.contains_key(pod_uid) {
            let (link, adopted) = self.attach_program(ebpf, INGRESS, pod_uid, cgroup_dir)?;
            if adopted {
                how = EnforcementAttach::Adopted;
            }
            self.links.insert(
                pod_uid.to_string(),
                PodLinks {
                    ingress: link,
                    egress: None,
                },
            );
        }
        let has_egress = self.links.get(pod_uid).is_some_and(|l| l.egress.is_some());
        if egress && !has_egress {
            let (link, _) = self.attach_program(ebpf, EGRESS, pod_uid, cgroup_dir)?;
            if let Some(links) = self.links.get_mut(pod_uid) {
                links.egress = Some(link);
            }
        } else if !egress {
            // Ours, or one an earlier agent pinned.
            let link = self
                .links
                .get_mut(pod_uid)
                .and_then(|l| l.egress.take())
                .or_else(|| PinnedLink::from_pin(self.link_path(EGRESS.3, pod_uid)).ok());
            if let Some(link) = link {
                unpin(pod_uid, link);
            }
        }
        Ok(how)
    }

    fn attach_program(
        &self,
        ebpf: &mut Ebpf,
        (program, attach_type, direction, prefix): Program,
        pod_uid: &str,
        cgroup_dir: &Path,
    ) -> Result<(PinnedLink, bool), CaptureError> {
        let path = self.link_path(prefix, pod_uid);
        self.attach_one(ebpf, program, attach_type, direction, &path, cgroup_dir)
    }

    /// Adopts the link pinned at `path`, or attaches `program` and pins its link there.
    /// True when adopted.
    fn attach_one(
        &self,
        ebpf: &mut Ebpf,
        program: &'static str,
        attach_type: CgroupSkbAttachType,
        direction: &'static str,
        path: &Path,
        cgroup_dir: &Path,
    ) -> Result<(PinnedLink, bool), CaptureError> {
        if path.exists() {
            match PinnedLink::from_pin(path) {
                Ok(link) => return Ok((link, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %error_chain(&e), "stale enforcement pin removed");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let attach_err = |reason: String| CaptureError::Attach {
            program,
            direction,
            path: cgroup_dir.to_path_buf(),
            reason,
        };
        let dir = File::open(cgroup_dir).map_err(|e| CaptureError::CgroupOpen {
            path: cgroup_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let prog: &mut aya::programs::CgroupSkb = ebpf
            .program_mut(program)
            .ok_or(CaptureError::MissingInObject {
                kind: "program",
                name: program,
            })?
            .try_into()
            .map_err(|_| CaptureError::MissingInObject {
                kind: "cgroup_skb program",
                name: program,
            })?;
        let id = prog
            .attach(&dir, attach_type, CgroupAttachMode::Single)
            .map_err(|e| attach_err(error_chain(&e)))?;
        let link = prog.take_link(id).map_err(|e| attach_err(error_chain(&e)))?;
        let fd_link: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
            attach_err(format!("not a bpf_link: {}", error_chain(&e)))
        })?;
        std::fs::create_dir_all(path.parent().unwrap_or(&self.pin_dir))
            .map_err(|e| attach_err(format!("creating {}: {e}", self.pin_dir.display())))?;
        let pinned = fd_link.pin(path).map_err(|e| {
            attach_err(format!(
                "pinning the link at {}: {}",
                path.display(),
                error_chain(&e)
            ))
        })?;
        Ok((pinned, false))
    }

    /// Detaches the pod's enforcement programs (unpins their links), also ones pinned by an
    /// earlier agent and not adopted.
    pub fn detach(&mut self, pod_uid: &str) {
        let links: Vec<PinnedLink> = match self.links.remove(pod_uid) {
            Some(l) => std::iter::once(l.ingress).chain(l.egress).collect(),
            None => PROGRAMS
                .iter()
                .filter_map(|(_, _, _, prefix)| PinnedLink::from_pin(self.link_path(prefix, pod_uid)).ok())
                .collect(),
        };
        for link in links {
            unpin(pod_uid, link);
        }
    }

    /// Pod UIDs with pinned enforcement links left by an earlier agent (not adopted yet).
    pub fn pinned_pods(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.pin_dir.join("links")) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| {
                        PROGRAMS
                            .iter()
                            .find_map(|(_, _, _, prefix)| n.strip_prefix(prefix))
                    })
                    .map(String::from)
            })
            .filter(|uid| !self.links.contains_key(uid))
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect()
    }
}

/// Unpins a link; when it was the last reference, the kernel detaches the program.
fn unpin(pod_uid: &str, link: PinnedLink) {
    match link.unpin() {
        Ok(fd_link) => drop(fd_link),
        Err(e) => tracing::warn!(pod_uid, error = %error_chain(&e), "unpinning an enforcement link"),
    }
}

fn blocked_map(ebpf: &mut Ebpf) -> Result<BpfHashMap<&mut MapData, BlockKey, BlockValue>, CaptureError> {
    let map = ebpf
        .map_mut(MAP_BLOCKED_SOURCES)
        .ok_or(CaptureError::MissingInObject {
            kind: "map",
            name: MAP_BLOCKED_SOURCES,
        })?;
    BpfHashMap::try_from(map).map_err(|e| CaptureError::Map {
        map: MAP_BLOCKED_SOURCES,
        reason: error_chain(&e),
    })
}

/// Every entry of the blocked-sources map (including ones an earlier agent wrote).
pub fn blocks(ebpf: &mut Ebpf) -> Result<Vec<(BlockKey, BlockValue)>, CaptureError> {
    let map = blocked_map(ebpf)?;
    Ok(map.iter().flatten().collect())
}

/// Blocks (or extends the block of) a source for a pod cgroup until `expires_ns`
/// (CLOCK_MONOTONIC), keeping its drop count.
pub fn block(ebpf: &mut Ebpf, key: BlockKey, expires_ns: u64) -> Result<(), CaptureError> {
    let mut map = blocked_map(ebpf)?;
    let dropped_packets = map.get(&key, 0).map(|v| v.dropped_packets).unwrap_or(0);
    map.insert(
        key,
        BlockValue {
            expires_ns,
            dropped_packets,
        },
        0,
    )
    .map_err(|e| CaptureError::Map {
        map: MAP_BLOCKED_SOURCES,
        reason: error_chain(&e),
    })?;
    set_active(ebpf, ENFORCE_BLOCKS, true)
}

/// Removes a block; returns its packets dropped.
pub fn unblock(ebpf: &mut Ebpf, key: &BlockKey) -> Result<u64, CaptureError> {
    let mut map = blocked_map(ebpf)?;
    let dropped = map.get(key, 0).map(|v| v.dropped_packets).unwrap_or(0);
    let _ = map.remove(key);
    // One key lookup tells whether any block is left (no walk over the map).
    let any_left = map.keys().next().is_some();
    set_active(ebpf, ENFORCE_BLOCKS, any_left)?;
    Ok(dropped)
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> CaptureError {
    move |e| CaptureError::Map {
        map,
        reason: error_chain(&e),
    }
}

fn isolated_map(ebpf: &mut Ebpf) -> Result<BpfHashMap<&mut MapData, u64, IsolationValue>, CaptureError> {
    let map = ebpf
        .map_mut(MAP_ISOLATED_WORKLOADS)
        .ok_or(CaptureError::MissingInObject {
            kind: "map",
            name: MAP_ISOLATED_WORKLOADS,
        })?;
    BpfHashMap::try_from(map).map_err(map_err(MAP_ISOLATED_WORKLOADS))
}

fn allow_map(ebpf: &mut Ebpf) -> Result<LpmTrie<&mut MapData, IsolationAllowKey, u8>, CaptureError> {
    let map = ebpf
        .map_mut(MAP_ISOLATION_ALLOW)
        .ok_or(CaptureError::MissingInObject {
            kind: "map",
            name: MAP_ISOLATION_ALLOW,
        })?;
    LpmTrie::try_from(map).map_err(map_err(MAP_ISOLATION_ALLOW))
}

/// One allow-list entry of an isolated pod: an address prefix (IPv4 as IPv4-mapped IPv6, the
/// prefix length counted on the 128 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowPrefix {
    pub addr: [u8; 16],
    pub prefix_len: u8,
}

fn allow_key(cgroup_id: u64, p: &AllowPrefix) -> LpmKey<IsolationAllowKey> {
    LpmKey::new(
        palisade_common::ISOLATION_ALLOW_CGROUP_BITS + u32::from(p.prefix_len.min(128)),
        IsolationAllowKey {
            cgroup_id,
            addr: p.addr,
        },
    )
}

/// Isolates a pod cgroup (or changes its isolation): writes the allow-list first (adding
/// `allow`, removing `remove`), then the isolation, so no allowed peer is ever refused. Keeps the
/// drop counters of an isolation already in the map.
pub fn isolate(
    ebpf: &mut Ebpf,
    cgroup_id: u64,
    expires_ns: u64,
    flags: u64,
    cause: [u8; 16],
    allow: &[AllowPrefix],
    remove: &[AllowPrefix],
) -> Result<(), CaptureError> {
    {
        let mut trie = allow_map(ebpf)?;
        for p in allow {
            trie.insert(&allow_key(cgroup_id, p), 1u8, 0)
                .map_err(map_err(MAP_ISOLATION_ALLOW))?;
        }
        for p in remove {
            let _ = trie.remove(&allow_key(cgroup_id, p));
        }
    }
    let mut map = isolated_map(ebpf)?;
    let old = map.get(&cgroup_id, 0).unwrap_or_default();
    map.insert(
        cgroup_id,
        IsolationValue {
            expires_ns,
            flags,
            dropped_ingress: old.dropped_ingress,
            dropped_egress: old.dropped_egress,
            cause,
        },
        0,
    )
    .map_err(map_err(MAP_ISOLATED_WORKLOADS))?;
    set_active(ebpf, ENFORCE_ISOLATION, true)
}

/// Ends a pod's isolation and removes its allow-list; returns its last value (drop counts).
pub fn unisolate(
    ebpf: &mut Ebpf,
    cgroup_id: u64,
    allow: &[AllowPrefix],
) -> Result<Option<IsolationValue>, CaptureError> {
    let mut map = isolated_map(ebpf)?;
    let old = map.get(&cgroup_id, 0).ok();
    let _ = map.remove(&cgroup_id);
    let any_left = map.keys().next().is_some();
    {
        let mut trie = allow_map(ebpf)?;
        for p in allow {
            let _ = trie.remove(&allow_key(cgroup_id, p));
        }
        // Entries an earlier agent left for this cgroup (it knew another allow-list).
        let stale: Vec<_> = trie
            .keys()
            .flatten()
            .filter(|k| k.data().cgroup_id == cgroup_id)
            .collect();
        for k in stale {
            let _ = trie.remove(&k);
        }
    }
    set_active(ebpf, ENFORCE_ISOLATION, any_left)?;
    Ok(old)
}

/// Every isolated cgroup in the map (including ones an earlier agent wrote).
pub fn isolations(ebpf: &mut Ebpf) -> Result<Vec<(u64, IsolationValue)>, CaptureError> {
    let map = isolated_map(ebpf)?;
    Ok(map.iter().flatten().collect())
}

/// Sets or clears one `ENFORCE_ACTIVE` bit (the programs' fast path). Constant time: a new block
/// must reach the kernel quickly however many there are.
fn set_active(ebpf: &mut Ebpf, bit: u64, any: bool) -> Result<(), CaptureError> {
    let map = ebpf
        .map_mut(MAP_ENFORCE_ACTIVE)
        .ok_or(CaptureError::MissingInObject {
            kind: "map",
            name: MAP_ENFORCE_ACTIVE,
        })?;
    let mut active: Array<&mut MapData, u64> = Array::try_from(map).map_err(|e| CaptureError::Map {
        map: MAP_ENFORCE_ACTIVE,
        reason: error_chain(&e),
    })?;
    let old = active.get(&0, 0).unwrap_or(0);
    let new = if any { old | bit } else { old & !bit };
    active.set(0, new, 0).map_err(|e| CaptureError::Map {
        map: MAP_ENFORCE_ACTIVE,
        reason: error_chain(&e),
    })
}
