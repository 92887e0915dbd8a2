//! Node-local plumbing for the fake kubelet: the cgroup v2 root, bridge subnets, network
//! namespaces and veths (all through iproute2), and the per-pod resource guard.

use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{run_checked, run_quiet, ChildGuard};

/// First two octets of the range pod subnets are picked from (10.231.0.0/16).
pub const POD_RANGE_PREFIX: [u8; 2] = [10, 231];

/// Where the cgroup v2 hierarchy is mounted, read from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        // <id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> <super options>
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        if let (Some(&"/"), Some(mount_point)) = (fields.get(3), fields.get(4)) {
            return Ok(PathBuf::from(mount_point.replace("\\040", " ")));
        }
    }
    bail!("no cgroup2 mount in /proc/self/mountinfo (the harness needs the cgroup v2 hierarchy)")
}

/// A random lowercase hex string of `len` characters (at most 16).
pub fn random_hex(len: usize) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let s = format!("{:016x}", hasher.finish());
    s[..len.min(16)].to_owned()
}

/// Serialises subnet selection and bridge creation among harness processes on this machine.
pub fn net_lock() -> Result<std::fs::File> {
    let dir = Path::new("/run/lock");
    let dir = if dir.is_dir() { dir } else { Path::new("/tmp") };
    let path = dir.join("palisade-e2e-net.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// The third octets `x` of every 10.231.x.0/24 already used by an address or a route here.
fn used_third_octets() -> Result<Vec<u8>> {
    let mut used = Vec::new();
    let text =
        run_checked("ip", &["-o", "-4", "addr", "show"])? + &run_checked("ip", &["-4", "route", "show"])?;
    for word in text.split_whitespace() {
        let addr = word.split('/').next().unwrap_or(word);
        if let Ok(ip) = addr.parse::<Ipv4Addr>() {
            let o = ip.octets();
            if o[..2] == POD_RANGE_PREFIX {
                used.push(o[2]);
            }
        }
    }
    Ok(used)
}

/// Picks a 10.231.x.0/24 not present on any interface or route (random among the free ones).
/// Call with [`net_lock`] held until the bridge has its address.
pub fn pick_subnet() -> Result<u8> {
    let used = used_third_octets()?;
    let free: Vec<u8> = (1..=254u8).filter(|x| !used.contains(x)).collect();
    if free.is_empty() {
        bail!("every 10.231.x.0/24 is already in use on this machine");
    }
    let r = u64::from_str_radix(&random_hex(8), 16).unwrap_or_default() as usize;
    Ok(free[r % free.len()])
}

/// Creates a bridge with `ip/24` and brings it up.
pub fn create_bridge(name: &str, ip: Ipv4Addr) -> Result<()> {
    run_checked("ip", &["link", "add", name, "type", "bridge"])
        .with_context(|| format!("creating bridge {name}"))?;
    let setup = || -> Result<()> {
        run_checked("ip", &["addr", "add", &format!("{ip}/24"), "dev", name])?;
        run_checked("ip", &["link", "set", name, "up"])?;
        Ok(())
    };
    if let Err(e) = setup() {
        run_quiet("ip", &["link", "del", name]);
        return Err(e.context(format!("configuring bridge {name} with {ip}/24")));
    }
    Ok(())
}

/// Everything one fake pod holds on the node. Cleaned up on drop (best effort, never panics).
#[derive(Debug)]
pub struct PodResources {
    pub label: String,
    pub child: Option<ChildGuard>,
    pub cgroup_dir: Option<PathBuf>,
    pub netns: Option<String>,
    pub host_veth: Option<String>,
}

impl PodResources {
    /// Nothing held yet; `label` names the pod in log messages.
    pub fn new(label: &str) -> PodResources {
        PodResources {
            label: label.to_owned(),
            child: None,
            cgroup_dir: None,
            netns: None,
            host_veth: None,
        }
    }

    /// Creates the pod's cgroup directory (parents included) and records it for cleanup.
    pub fn make_cgroup(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        self.cgroup_dir = Some(dir.to_owned());
        Ok(())
    }

    /// Creates netns `netns` holding `eth0` with `ip/24` (veth peer of `host_veth`, which is
    /// enslaved to `bridge`), lo up and a default route via `gateway`.
    pub fn make_netns(
        &mut self,
        netns: &str,
        host_veth: &str,
        bridge: &str,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        run_checked("ip", &["netns", "add", netns]).with_context(|| format!("creating netns {netns}"))?;
        self.netns = Some(netns.to_owned());
        run_checked(
            "ip",
            &[
                "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
        )
        .with_context(|| format!("creating veth {host_veth} into netns {netns}"))?;
        self.host_veth = Some(host_veth.to_owned());
        let cidr = format!("{ip}/24");
        let gw = gateway.to_string();
        let steps: [&[&str]; 6] = [
            &["link", "set", host_veth, "master", bridge],
            &["link", "set", host_veth, "up"],
            &["-n", netns, "link", "set", "lo", "up"],
            &["-n", netns, "addr", "add", &cidr, "dev", "eth0"],
            &["-n", netns, "link", "set", "eth0", "up"],
            &["-n", netns, "route", "add", "default", "via", &gw],
        ];
        for args in steps {
            run_checked("ip", args).with_context(|| format!("setting up the network of netns {netns}"))?;
        }
        Ok(())
    }

    /// Kills every process of the pod, removes its netns, veth and cgroup dir. Idempotent.
    pub fn cleanup(&mut self) {
        if let Some(dir) = &self.cgroup_dir {
            // cgroup.kill (Linux >= 5.14) also catches processes the workload forked.
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        if let Some(netns) = self.netns.take() {
            if !run_quiet("ip", &["netns", "del", &netns]) {
                tracing::warn!(pod = %self.label, %netns, "could not delete netns");
            }
        }
        if let Some(veth) = self.host_veth.take() {
            // Normally gone with the netns already.
            if Path::new("/sys/class/net").join(&veth).exists() {
                run_quiet("ip", &["link", "del", &veth]);
            }
        }
        if let Some(dir) = self.cgroup_dir.take() {
            let start = Instant::now();
            loop {
                for child in child_cgroups(&dir) {
                    let _ = std::fs::remove_dir(&child);
                }
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if start.elapsed() > Duration::from_secs(3) => {
                        tracing::warn!(pod = %self.label, dir = %dir.display(), "could not remove cgroup: {e}");
                        break;
                    }
                    Err(_) => {
                        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }
}

impl Drop for PodResources {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The pids in a cgroup and its child cgroups (a pod's processes sit in container cgroups).
pub fn cgroup_pids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    for child in child_cgroups(dir) {
        pids.extend(cgroup_pids(&child)?);
    }
    Ok(pids)
}

fn child_cgroups(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}
