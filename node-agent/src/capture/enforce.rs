//! Enforcement in the kernel: the `palisade_enforce_ingress` program on protected pods' cgroups
//! drops packets from blocked sources (see `node-agent-ebpf`).
//!
//! Crash safety: the maps (`BLOCKED_SOURCES`, `ENFORCE_ACTIVE`) and the program's links are pinned
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
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{links::FdLink, links::PinnedLink, CgroupAttachMode, CgroupSkbAttachType},
    Ebpf,
};
use palisade_common::{BlockKey, BlockValue, MAP_BLOCKED_SOURCES, MAP_ENFORCE_ACTIVE, PROG_ENFORCE_INGRESS};

use super::{error_chain, CaptureError};

/// The pinned enforcement links of this agent, by pod UID.
#[derive(Debug)]
pub struct Enforcement {
    pin_dir: PathBuf,
    links: BTreeMap<String, PinnedLink>,
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

    fn link_path(&self, pod_uid: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("enforce-ingress-{pod_uid}"))
    }

    /// Makes sure the enforcement program is attached to the pod's cgroup: adopts a link pinned
    /// by an earlier agent, or attaches and pins a new one.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        pod_uid: &str,
        cgroup_dir: &Path,
    ) -> Result<EnforcementAttach, CaptureError> {
        if self.links.contains_key(pod_uid) {
            return Ok(EnforcementAttach::Attached);
        }
        let path = self.link_path(pod_uid);
        if path.exists() {
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    self.links.insert(pod_uid.to_string(), link);
                    return Ok(EnforcementAttach::Adopted);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %error_chain(&e), "stale enforcement pin removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let attach_err = |reason: String| CaptureError::Attach {
            program: PROG_ENFORCE_INGRESS,
            direction: "ingress",
            path: cgroup_dir.to_path_buf(),
            reason,
        };
        let dir = File::open(cgroup_dir).map_err(|e| CaptureError::CgroupOpen {
            path: cgroup_dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let prog: &mut aya::programs::CgroupSkb = ebpf
            .program_mut(PROG_ENFORCE_INGRESS)
            .ok_or(CaptureError::MissingInObject {
                kind: "program",
                name: PROG_ENFORCE_INGRESS,
            })?
            .try_into()
            .map_err(|_| CaptureError::MissingInObject {
                kind: "cgroup_skb program",
                name: PROG_ENFORCE_INGRESS,
            })?;
        let id = prog
            .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .map_err(|e| attach_err(error_chain(&e)))?;
        let link = prog.take_link(id).map_err(|e| attach_err(error_chain(&e)))?;
        let fd_link: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
            attach_err(format!("not a bpf_link: {}", error_chain(&e)))
        })?;
        std::fs::create_dir_all(path.parent().unwrap_or(&self.pin_dir))
            .map_err(|e| attach_err(format!("creating {}: {e}", self.pin_dir.display())))?;
        let pinned = fd_link.pin(&path).map_err(|e| {
            attach_err(format!(
                "pinning the link at {}: {}",
                path.display(),
                error_chain(&e)
            ))
        })?;
        self.links.insert(pod_uid.to_string(), pinned);
        Ok(EnforcementAttach::Attached)
    }

    /// Detaches the pod's enforcement program (unpins its link), also one pinned by an earlier
    /// agent and not adopted.
    pub fn detach(&mut self, pod_uid: &str) {
        let link = self
            .links
            .remove(pod_uid)
            .or_else(|| PinnedLink::from_pin(self.link_path(pod_uid)).ok());
        if let Some(link) = link {
            match link.unpin() {
                Ok(fd_link) => drop(fd_link), // the last reference: the kernel detaches
                Err(e) => tracing::warn!(pod_uid, error = %error_chain(&e), "unpinning an enforcement link"),
            }
        }
    }

    /// Pod UIDs with a pinned enforcement link left by an earlier agent (not adopted yet).
    pub fn pinned_pods(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.pin_dir.join("links")) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("enforce-ingress-"))
                    .map(String::from)
            })
            .filter(|uid| !self.links.contains_key(uid))
            .collect()
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
    set_active(ebpf, true)
}

/// Removes a block; returns its packets dropped.
pub fn unblock(ebpf: &mut Ebpf, key: &BlockKey) -> Result<u64, CaptureError> {
    let mut map = blocked_map(ebpf)?;
    let dropped = map.get(key, 0).map(|v| v.dropped_packets).unwrap_or(0);
    let _ = map.remove(key);
    // One key lookup tells whether any block is left (no walk over the map).
    let any_left = map.keys().next().is_some();
    set_active(ebpf, any_left)?;
    Ok(dropped)
}

/// Sets `ENFORCE_ACTIVE` (the program's fast path): 1 while blocks may exist, 0 when none is left.
/// Constant time: a new block must reach the kernel quickly however many there are.
fn set_active(ebpf: &mut Ebpf, any: bool) -> Result<(), CaptureError> {
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
    active.set(0, u64::from(any), 0).map_err(|e| CaptureError::Map {
        map: MAP_ENFORCE_ACTIVE,
        reason: error_chain(&e),
    })
}
