//! What the kernel says, independently of the agent and the operator: which programs are attached
//! to a cgroup (BPF_PROG_QUERY) and the agent's capture counters (its per-CPU counters map, found
//! through the agent process's own file descriptors).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use palisade_common::{CaptureCounters, MAP_CAPTURE_COUNTERS};

/// `BPF_PROG_QUERY` (include/uapi/linux/bpf.h, enum bpf_cmd).
const BPF_PROG_QUERY: libc::c_long = 16;
/// `BPF_CGROUP_INET_INGRESS` and `BPF_CGROUP_INET_EGRESS` (enum bpf_attach_type).
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
/// `BPF_MAP_TYPE_PERCPU_ARRAY` as printed in a map fd's fdinfo.
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
/// Map names are cut to 15 bytes by the kernel (BPF_OBJ_NAME_LEN - 1).
const KERNEL_NAME_LEN: usize = 15;

/// The `query` member of `union bpf_attr`, up to `prog_cnt`.
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// `BPF_F_QUERY_EFFECTIVE`: count what runs for the cgroup, including programs inherited from
/// its ancestors.
const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// Programs that run for the cgroup `dir`'s packets at ingress and at egress (`cgroup_skb`; the
/// effective set, so programs attached to an ancestor count too).
pub fn cgroup_skb_programs(dir: &Path) -> Result<(u32, u32)> {
    let (ingress, egress) = cgroup_skb_program_ids(dir)?;
    Ok((ingress.len() as u32, egress.len() as u32))
}

/// Most programs listed per attach point; a cgroup has a handful.
const MAX_QUERIED_PROGRAMS: usize = 64;

/// The ids of the programs that run for the cgroup `dir`'s packets, at ingress and at egress
/// (the effective set, as [`cgroup_skb_programs`]).
pub fn cgroup_skb_program_ids(dir: &Path) -> Result<(Vec<u32>, Vec<u32>)> {
    let cgroup = File::open(dir).with_context(|| format!("opening cgroup {}", dir.display()))?;
    let query = |attach_type: u32| -> Result<Vec<u32>> {
        let mut ids = [0u32; MAX_QUERIED_PROGRAMS];
        let mut attr = ProgQueryAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type,
            query_flags: BPF_F_QUERY_EFFECTIVE,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: MAX_QUERIED_PROGRAMS as u32,
            ..ProgQueryAttr::default()
        };
        // SAFETY: `attr` is a properly laid out, zero-initialised prefix of `union bpf_attr` that
        // lives across the call; the kernel writes at most `prog_cnt` ids into `ids`, which
        // outlives the call, and writes back `prog_cnt`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut ProgQueryAttr,
                std::mem::size_of::<ProgQueryAttr>() as u32,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            bail!("BPF_PROG_QUERY on {} failed: {err}", dir.display());
        }
        let n = (attr.prog_cnt as usize).min(MAX_QUERIED_PROGRAMS);
        Ok(ids[..n].to_vec())
    };
    Ok((query(BPF_CGROUP_INET_INGRESS)?, query(BPF_CGROUP_INET_EGRESS)?))
}

/// What the kernel's BPF statistics say about a set of programs, summed: time spent running them
/// and how many times they ran. Only counted while statistics are on ([`RunTimeStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    pub run_time_ns: u64,
    pub runs: u64,
}

impl ProgramRuns {
    /// The programs with these ids, summed (a program that is gone counts nothing).
    pub fn read(ids: &[u32]) -> Result<ProgramRuns> {
        let mut sum = ProgramRuns::default();
        for info in aya::programs::loaded_programs() {
            let info = info.context("listing the loaded BPF programs")?;
            if ids.contains(&info.id()) {
                sum.run_time_ns += info.run_time().as_nanos() as u64;
                sum.runs += info.run_count();
            }
        }
        Ok(sum)
    }

    /// These runs and `other`'s together.
    pub fn plus(&self, other: &ProgramRuns) -> ProgramRuns {
        ProgramRuns {
            run_time_ns: self.run_time_ns + other.run_time_ns,
            runs: self.runs + other.runs,
        }
    }

    /// Mean run time of one run, ns.
    pub fn ns_per_run(&self) -> f64 {
        self.run_time_ns as f64 / self.runs.max(1) as f64
    }

    pub fn since(&self, before: &ProgramRuns) -> ProgramRuns {
        ProgramRuns {
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            runs: self.runs.saturating_sub(before.runs),
        }
    }
}

/// The kernel's BPF run-time statistics, on while this lives (`BPF_ENABLE_STATS`; the kernel
/// turns them off when the last such file descriptor closes). They cost two clock reads per
/// program run, so the benchmark turns them on only for the run that reads them.
pub struct RunTimeStats(#[allow(dead_code)] std::os::fd::OwnedFd);

impl RunTimeStats {
    pub fn enable() -> Result<RunTimeStats> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(RunTimeStats)
            .context("turning on the kernel's BPF run-time statistics (BPF_ENABLE_STATS)")
    }
}

/// The capture counters of the agent with process id `pid`, summed over CPUs and over every
/// counters map it holds (the cgroup capture's and, once TLS capture is loaded, the TLS
/// programs' own copy). `None` when the process holds no counters map (capture not loaded).
pub fn agent_counters(pid: u32) -> Result<Option<CaptureCounters>> {
    let wanted: String = MAP_CAPTURE_COUNTERS.chars().take(KERNEL_NAME_LEN).collect();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .with_context(|| format!("listing /proc/{pid}/fdinfo"))?;
    let mut seen: Vec<u32> = Vec::new();
    let mut sum: Option<CaptureCounters> = None;
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u32> {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(map_type), Some(id)) = (field("map_type:"), field("map_id:")) else {
            continue;
        };
        if map_type != BPF_MAP_TYPE_PERCPU_ARRAY || seen.contains(&id) {
            continue;
        }
        let Ok(map_info) = aya::maps::MapInfo::from_id(id) else {
            continue;
        };
        if map_info.name_as_str() != Some(wanted.as_str()) {
            continue;
        }
        let data = MapData::from_id(id).with_context(|| format!("opening map id {id}"))?;
        let array: PerCpuArray<MapData, CaptureCounters> = PerCpuArray::try_from(Map::PerCpuArray(data))
            .with_context(|| {
                format!("map {MAP_CAPTURE_COUNTERS} (id {id}) is not an array of CaptureCounters")
            })?;
        let per_cpu = array
            .get(&0, 0)
            .with_context(|| format!("reading map {MAP_CAPTURE_COUNTERS} (id {id})"))?;
        seen.push(id);
        let total = sum.get_or_insert_with(CaptureCounters::default);
        for c in per_cpu.iter() {
            total.add(c);
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_attr_matches_the_kernel_prefix() {
        // target_fd, attach_type, query_flags, attach_flags (4 x u32), prog_ids (u64),
        // prog_cnt (u32) and the padding before the next u64 member.
        assert_eq!(std::mem::size_of::<ProgQueryAttr>(), 32);
    }
}
