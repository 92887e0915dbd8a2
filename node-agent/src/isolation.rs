//! Isolation: quarantining a workload in the kernel. An isolated pod accepts new inbound
//! connections only from its allow-list (the addresses the operator resolved: same-namespace
//! pods and named CIDRs; plus loopback, the pod's own addresses and, when asked, this node's
//! addresses for health probes), and with `denyEgress` opens new connections only to it.
//! Established connections, DNS and ICMP pass (see `palisade_common::IsolationValue`).
//!
//! The operator says what to isolate ([`IsolationConfig`], level-triggered: each configuration
//! holds every isolation in force); the [`Isolator`] makes the kernel match it and reports the
//! state of every pod. Isolations survive the agent: the maps are pinned, and a restarted agent
//! finds the entries, reports them `adopted` and carries on; entries nobody asks for any more
//! are removed.
//!
//! A policy rule's `isolate` action isolates the attacked pod the moment the rule fires
//! ([`Isolator::trigger`]), for the action's ttl; those isolations are reported as action records
//! of the policy (like `blockSource`), adopted after a restart from the kernel's entries (which
//! keep the causing source) and end at their expiry or when the policy stops enforcing.

use crate::capture::AllowPrefix;
use crate::cidr::Cidr;
use crate::runtime::CaptureBackend;
use palisade_api::agent::{ActionRecord, IsolatedPod, IsolationConfig, IsolationReport, ObjectRef};
use palisade_common::ISOLATION_DENY_EGRESS;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// Most allow-list prefixes per isolated pod; longer lists are refused with a clear error.
pub const MAX_ALLOW_PER_POD: usize = 4096;

/// One pod to isolate, resolved to its cgroup.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredIsolation {
    pub owner: ObjectRef,
    pub pod_namespace: String,
    pub pod_name: String,
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC; `u64::MAX`: until released.
    pub expires_ns: u64,
    pub flags: u64,
    pub allow: BTreeSet<AllowPrefix>,
}

/// What started an isolation that a policy's rule triggered.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub rule: String,
    /// The attacking source (its address), as the records name it.
    pub source: IpAddr,
    /// False in audit mode: recorded as "would have isolated", nothing in the kernel.
    pub enforced: bool,
}

#[derive(Clone, Debug)]
struct Active {
    desired: DesiredIsolation,
    state: &'static str,
    detail: String,
    since_unix_ms: i64,
    dropped_ingress: u64,
    dropped_egress: u64,
    /// Set for isolations a rule triggered (the owner is then the policy).
    trigger: Option<Trigger>,
}

/// A pod that could not be isolated (no cgroup, too long an allow-list, …): reported as failed.
#[derive(Clone, Debug)]
pub struct FailedIsolation {
    pub owner: ObjectRef,
    pub pod_namespace: String,
    pub pod_name: String,
    pub detail: String,
}

/// The isolations in force on this node.
#[derive(Default)]
pub struct Isolator {
    active: HashMap<u64, Active>,
    /// Isolations rules triggered, by cgroup (in force in the kernel, recorded in audit mode, or
    /// failed: retried only after their ttl).
    triggered: HashMap<u64, Active>,
    failed: Vec<FailedIsolation>,
    /// Whether the kernel's entries left by an earlier agent were reconciled.
    adopted: bool,
    /// Action records for policies, not yet reported.
    records: Vec<(ObjectRef, ActionRecord)>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns (records carry Unix times).
    clock_offset_ns: i64,
}

fn cause_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The source stored in a kernel entry (`None` for an isolation asked by hand).
pub fn cause_addr(cause: [u8; 16]) -> Option<IpAddr> {
    if cause == [0; 16] {
        return None;
    }
    let v6 = std::net::Ipv6Addr::from(cause);
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// The prefix of one address (a host route).
pub fn host_prefix(ip: IpAddr) -> AllowPrefix {
    match ip {
        IpAddr::V4(v4) => AllowPrefix {
            addr: v4.to_ipv6_mapped().octets(),
            prefix_len: 128,
        },
        IpAddr::V6(v6) => AllowPrefix {
            addr: v6.octets(),
            prefix_len: 128,
        },
    }
}

/// Parses an allow-list entry: a CIDR or a bare address.
pub fn parse_allow(entry: &str) -> Result<AllowPrefix, String> {
    if !entry.contains('/') {
        let ip: IpAddr = entry
            .parse()
            .map_err(|e| format!("allow-list entry {entry:?}: {e}"))?;
        return Ok(host_prefix(ip));
    }
    let cidr = Cidr::parse(entry).map_err(|e| format!("allow-list entry {e}"))?;
    let (network, prefix) = cidr.parts();
    let (addr, prefix_len) = match network {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + prefix),
        IpAddr::V6(v6) => (v6.octets(), prefix),
    };
    Ok(AllowPrefix {
        addr: mask(addr, prefix_len),
        prefix_len,
    })
}

fn mask(addr: [u8; 16], prefix_len: u8) -> [u8; 16] {
    let bits = u128::from_be_bytes(addr);
    let m = if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix_len.min(128)))
    };
    (bits & m).to_be_bytes()
}

/// The addresses of this host's interfaces (the node's own addresses: kubelet health probes come
/// from one of them).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = vec![];
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; we only read it.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET: a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6: a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    out
}

/// The allow-list the kernel gets for one pod of an isolation: the configured entries, loopback,
/// the pod's own addresses and, with `allow_node`, the node's. Errors name the bad entry.
pub fn allow_list(
    cfg: &IsolationConfig,
    pod_ips: &[String],
    node_addresses: &[IpAddr],
) -> Result<BTreeSet<AllowPrefix>, String> {
    let mut allow = BTreeSet::new();
    for entry in cfg.allow_cidrs.iter().chain(pod_ips) {
        allow.insert(parse_allow(entry)?);
    }
    allow.insert(parse_allow("127.0.0.0/8")?);
    allow.insert(parse_allow("::1/128")?);
    if cfg.allow_node {
        allow.extend(node_addresses.iter().map(|ip| host_prefix(*ip)));
    }
    if allow.len() > MAX_ALLOW_PER_POD {
        return Err(format!(
            "the allow-list has {} entries, more than the {MAX_ALLOW_PER_POD} the node keeps per pod",
            allow.len()
        ));
    }
    Ok(allow)
}

/// Flags for the kernel entry.
pub fn flags(cfg: &IsolationConfig) -> u64 {
    if cfg.deny_egress {
        ISOLATION_DENY_EGRESS
    } else {
        0
    }
}

/// What a rule's `isolate` action asks for a cgroup, to adopt a kernel entry after a restart:
/// the isolation (its expiry is taken from the kernel) and the rule.
pub type AdoptIsolation<'a> = &'a dyn Fn(u64) -> Option<(DesiredIsolation, String)>;

impl Isolator {
    pub fn new(clock_offset_ns: i64) -> Self {
        Isolator {
            clock_offset_ns,
            ..Default::default()
        }
    }

    fn unix_ms(&self, mono_ns: u64) -> i64 {
        if mono_ns == u64::MAX {
            return 0;
        }
        (mono_ns as i64).saturating_add(self.clock_offset_ns) / 1_000_000
    }

    /// Queues an action record for the policy that triggered `a`.
    fn record(&mut self, a: &Active, state: &str, now_ns: u64) {
        let Some(t) = &a.trigger else { return };
        let record = ActionRecord {
            rule: t.rule.clone(),
            action: "isolate".into(),
            source: t.source.to_string(),
            pod_namespace: a.desired.pod_namespace.clone(),
            pod_name: a.desired.pod_name.clone(),
            enforced: t.enforced && a.state != "failed",
            state: state.into(),
            expires_unix_ms: self.unix_ms(a.desired.expires_ns),
            dropped_packets: a.dropped_ingress + a.dropped_egress,
            at_unix_ms: self.unix_ms(now_ns),
            detail: a.detail.clone(),
        };
        tracing::info!(
            policy = %a.desired.owner.name, rule = %record.rule, source = %record.source,
            pod = %format!("{}/{}", record.pod_namespace, record.pod_name),
            enforced = record.enforced, state = %record.state, detail = %record.detail, "isolate"
        );
        self.records.push((a.desired.owner.clone(), record));
    }

    /// Whether the kernel's entries left by an earlier agent were reconciled (by the first
    /// [`Self::sync`]).
    pub fn reconciled(&self) -> bool {
        self.adopted
    }

    /// The action records of triggered isolations not reported yet.
    pub fn take_records(&mut self) -> Vec<(ObjectRef, ActionRecord)> {
        std::mem::take(&mut self.records)
    }

    /// Whether a rule's isolation of this cgroup is already in force (or recorded, or failed)
    /// and not over, or the pod is isolated by hand: a trigger would do nothing.
    pub fn triggered_now(&self, cgroup_id: u64, enforce: bool, now_ns: u64) -> bool {
        if self.active.get(&cgroup_id).is_some_and(|a| a.trigger.is_none()) {
            return true;
        }
        self.triggered.get(&cgroup_id).is_some_and(|a| {
            a.desired.expires_ns > now_ns && a.trigger.as_ref().is_some_and(|t| t.enforced || !enforce)
        })
    }

    /// Isolates a pod because a rule fired (enforce), or records that it would have (audit).
    /// True when the kernel now isolates it.
    pub fn trigger<B: CaptureBackend>(
        &mut self,
        backend: Option<&mut B>,
        desired: DesiredIsolation,
        trigger: Trigger,
        now_ns: u64,
    ) -> bool {
        let id = desired.cgroup_id;
        if self.triggered_now(id, trigger.enforced, now_ns) {
            return false;
        }
        let mut a = Active {
            desired,
            state: "isolated",
            detail: String::new(),
            since_unix_ms: self.unix_ms(now_ns),
            dropped_ingress: 0,
            dropped_egress: 0,
            trigger: Some(trigger.clone()),
        };
        if trigger.enforced {
            let allow: Vec<AllowPrefix> = a.desired.allow.iter().copied().collect();
            let result = match backend {
                Some(b) => b.isolate(
                    id,
                    a.desired.expires_ns,
                    a.desired.flags,
                    cause_bytes(trigger.source),
                    &allow,
                    &[],
                ),
                None => Err("the capture programs are not loaded on this node".into()),
            };
            if let Err(reason) = result {
                a.state = "failed";
                a.detail = reason;
            }
        }
        let failed = a.state == "failed";
        self.record(&a, if failed { "failed" } else { "started" }, now_ns);
        let enforced = trigger.enforced && !failed;
        if enforced {
            self.active.insert(id, a.clone());
        }
        self.triggered.insert(id, a);
        enforced
    }

    /// Ends the triggered isolations whose ttl passed (the kernel stopped by itself already).
    pub fn expire<B: CaptureBackend>(&mut self, backend: Option<&mut B>, now_ns: u64) {
        self.end_triggered(backend, |a| a.desired.expires_ns <= now_ns, "expired", now_ns);
    }

    /// Ends the triggered isolations `ending` selects, in the kernel too, and records how.
    fn end_triggered<B: CaptureBackend>(
        &mut self,
        mut backend: Option<&mut B>,
        ending: impl Fn(&Active) -> bool,
        state: &str,
        now_ns: u64,
    ) {
        let ended: Vec<u64> = self
            .triggered
            .iter()
            .filter(|(_, a)| ending(a))
            .map(|(id, _)| *id)
            .collect();
        if ended.is_empty() {
            return;
        }
        // Final drop counts, one read of the map for all of them.
        let counters: HashMap<u64, palisade_common::IsolationValue> = match backend.as_mut() {
            Some(b) => b.isolations().into_iter().collect(),
            None => HashMap::new(),
        };
        for id in ended {
            let Some(mut a) = self.triggered.remove(&id) else {
                continue;
            };
            if self.active.get(&id).is_some_and(|x| x.trigger.is_some()) {
                self.active.remove(&id);
                if let Some(v) = counters.get(&id) {
                    a.dropped_ingress = v.dropped_ingress;
                    a.dropped_egress = v.dropped_egress;
                }
                if let Some(b) = backend.as_mut() {
                    let allow: Vec<AllowPrefix> = a.desired.allow.iter().copied().collect();
                    if let Err(e) = b.unisolate(id, &allow) {
                        tracing::warn!(cgroup_id = id, error = %e, "ending an isolation");
                    }
                }
            }
            if a.state != "failed" {
                self.record(&a, state, now_ns);
            }
        }
    }

    /// Makes the kernel hold exactly `desired` (one entry per pod cgroup) plus the isolations
    /// rules triggered that `keep` still wants, and remembers the pods that could not be
    /// isolated. After a restart, kernel entries a rule caused are adopted when `adopt` names
    /// their rule.
    pub fn sync<B: CaptureBackend>(
        &mut self,
        mut backend: Option<&mut B>,
        desired: Vec<DesiredIsolation>,
        failed: Vec<FailedIsolation>,
        keep: &dyn Fn(&ObjectRef, u64) -> bool,
        adopt: AdoptIsolation,
        now_ns: u64,
    ) {
        let now_unix_ms = self.unix_ms(now_ns);
        self.failed = failed;
        let in_kernel: HashMap<u64, palisade_common::IsolationValue> = match &mut backend {
            Some(b) if !self.adopted => b.isolations().into_iter().collect(),
            _ => HashMap::new(),
        };
        let first = !self.adopted;
        self.adopted = true;
        // Triggered isolations whose policy no longer enforces (or whose pod left) are released.
        self.end_triggered(
            backend.as_deref_mut(),
            |a| !keep(&a.desired.owner, a.desired.cgroup_id),
            "released",
            now_ns,
        );
        let mut wanted: BTreeMap<u64, DesiredIsolation> =
            desired.into_iter().map(|d| (d.cgroup_id, d)).collect();
        // An isolation by hand takes over a triggered one of the same pod.
        let overridden: Vec<u64> = self
            .triggered
            .keys()
            .copied()
            .filter(|id| wanted.contains_key(id))
            .collect();
        for id in overridden {
            self.triggered.remove(&id);
        }
        for (id, a) in &self.triggered {
            if self.active.get(id).is_some_and(|x| x.trigger.is_some()) {
                wanted.insert(*id, a.desired.clone());
            }
        }
        // After a restart: adopt what rules caused, if a policy still asks for it.
        if first {
            for (id, value) in &in_kernel {
                if wanted.contains_key(id) || value.expires_ns <= now_ns {
                    continue;
                }
                let (Some(source), Some((mut d, rule))) = (cause_addr(value.cause), adopt(*id)) else {
                    continue;
                };
                d.expires_ns = value.expires_ns;
                // The kernel entry stands; its allow-list is brought to what the policy asks now.
                if let Some(b) = backend.as_mut() {
                    let allow: Vec<AllowPrefix> = d.allow.iter().copied().collect();
                    if let Err(e) = b.isolate(*id, d.expires_ns, d.flags, value.cause, &allow, &[]) {
                        tracing::warn!(cgroup_id = id, error = %e, "refreshing an adopted isolation");
                    }
                }
                let a = Active {
                    desired: d.clone(),
                    state: "adopted",
                    detail: String::new(),
                    since_unix_ms: now_unix_ms,
                    dropped_ingress: value.dropped_ingress,
                    dropped_egress: value.dropped_egress,
                    trigger: Some(Trigger {
                        rule,
                        source,
                        enforced: true,
                    }),
                };
                self.record(&a, "adopted", now_ns);
                self.triggered.insert(*id, a.clone());
                self.active.insert(*id, a);
                wanted.insert(*id, d);
            }
        }

        // End what is no longer wanted (and, after a restart, what an earlier agent left).
        let ending: Vec<u64> = self
            .active
            .keys()
            .copied()
            .chain(in_kernel.keys().copied())
            .filter(|id| !wanted.contains_key(id))
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        for id in ending {
            let allow: Vec<AllowPrefix> = self
                .active
                .remove(&id)
                .map(|a| a.desired.allow.into_iter().collect())
                .unwrap_or_default();
            if let Some(b) = backend.as_mut() {
                if let Err(e) = b.unisolate(id, &allow) {
                    tracing::warn!(cgroup_id = id, error = %e, "ending an isolation");
                }
            }
            tracing::info!(cgroup_id = id, "isolation ended");
        }
        for (id, d) in wanted {
            let previous = self.active.get(&id);
            if previous.is_some_and(|a| a.desired == d && a.state != "failed") {
                continue;
            }
            let remove: Vec<AllowPrefix> = previous
                .map(|a| a.desired.allow.difference(&d.allow).copied().collect())
                .unwrap_or_default();
            let allow: Vec<AllowPrefix> = d.allow.iter().copied().collect();
            let result = match backend.as_mut() {
                Some(b) => b.isolate(id, d.expires_ns, d.flags, [0; 16], &allow, &remove),
                None => Err("the capture programs are not loaded on this node".into()),
            };
            let adopted = first && in_kernel.contains_key(&id);
            let (state, detail) = match result {
                Ok(()) if adopted => ("adopted", String::new()),
                Ok(()) => ("isolated", String::new()),
                Err(e) => ("failed", e),
            };
            tracing::info!(
                isolation = %format!("{}/{}", d.owner.namespace, d.owner.name),
                pod = %format!("{}/{}", d.pod_namespace, d.pod_name),
                state, %detail, "isolation"
            );
            let since_unix_ms = match previous {
                Some(a) if a.state != "failed" && state != "failed" => a.since_unix_ms,
                _ => now_unix_ms,
            };
            let kernel = in_kernel.get(&id);
            self.active.insert(
                id,
                Active {
                    desired: d,
                    state,
                    detail,
                    since_unix_ms,
                    dropped_ingress: kernel.map(|k| k.dropped_ingress).unwrap_or(0),
                    dropped_egress: kernel.map(|k| k.dropped_egress).unwrap_or(0),
                    trigger: None,
                },
            );
        }
    }

    /// Reads the kernel's drop counters.
    pub fn refresh_counters<B: CaptureBackend>(&mut self, backend: Option<&mut B>) {
        let Some(b) = backend else { return };
        if self.active.is_empty() {
            return;
        }
        for (id, value) in b.isolations() {
            if let Some(a) = self.active.get_mut(&id) {
                a.dropped_ingress = value.dropped_ingress;
                a.dropped_egress = value.dropped_egress;
            }
        }
    }

    /// Pods isolated in the kernel now.
    pub fn isolated(&self) -> usize {
        self.active.values().filter(|a| a.state != "failed").count()
    }

    /// The state of every pod isolated by hand, grouped by isolation (triggered isolations are
    /// reported as their policies' action records).
    pub fn report(&self) -> Vec<IsolationReport> {
        type Reports = BTreeMap<(String, String), IsolationReport>;
        fn entry<'a>(reports: &'a mut Reports, owner: &ObjectRef) -> &'a mut IsolationReport {
            reports
                .entry((owner.namespace.clone(), owner.name.clone()))
                .or_insert_with(|| IsolationReport {
                    isolation: Some(owner.clone()),
                    pods: vec![],
                })
        }
        let mut by_owner = Reports::new();
        for a in self.active.values().filter(|a| a.trigger.is_none()) {
            entry(&mut by_owner, &a.desired.owner).pods.push(IsolatedPod {
                pod_namespace: a.desired.pod_namespace.clone(),
                pod_name: a.desired.pod_name.clone(),
                state: a.state.into(),
                detail: a.detail.clone(),
                dropped_ingress: a.dropped_ingress,
                dropped_egress: a.dropped_egress,
                since_unix_ms: a.since_unix_ms,
                allow_entries: a.desired.allow.len() as u32,
            });
        }
        for f in &self.failed {
            entry(&mut by_owner, &f.owner).pods.push(IsolatedPod {
                pod_namespace: f.pod_namespace.clone(),
                pod_name: f.pod_name.clone(),
                state: "failed".into(),
                detail: f.detail.clone(),
                ..Default::default()
            });
        }
        let mut out: Vec<IsolationReport> = by_owner.into_values().collect();
        for r in &mut out {
            r.pods
                .sort_by(|a, b| (&a.pod_namespace, &a.pod_name).cmp(&(&b.pod_namespace, &b.pod_name)));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_and_mask() {
        let p = parse_allow("10.1.2.3/16").unwrap();
        assert_eq!(p.prefix_len, 112);
        assert_eq!(&p.addr[10..], &[0xff, 0xff, 10, 1, 0, 0]);
        let h = parse_allow("10.1.2.3").unwrap();
        assert_eq!(h.prefix_len, 128);
        assert_eq!(&h.addr[12..], &[10, 1, 2, 3]);
        assert_eq!(parse_allow("fd00::1/64").unwrap().prefix_len, 64);
        let e = parse_allow("10.1.2.3/40").unwrap_err();
        assert!(e.contains("10.1.2.3/40"), "{e}");
        assert!(parse_allow("nope").unwrap_err().contains("nope"));
    }

    #[test]
    fn allow_list_adds_loopback_pod_and_node_addresses() {
        let cfg = IsolationConfig {
            allow_cidrs: vec!["10.9.0.0/16".into()],
            allow_node: true,
            ..Default::default()
        };
        let node = vec!["192.168.5.1".parse().unwrap()];
        let list = allow_list(&cfg, &["10.244.0.7".into()], &node).unwrap();
        for want in [
            "10.9.0.0/16",
            "10.244.0.7",
            "127.0.0.0/8",
            "::1/128",
            "192.168.5.1",
        ] {
            assert!(list.contains(&parse_allow(want).unwrap()), "{want} missing");
        }
        let without_node = allow_list(
            &IsolationConfig {
                allow_node: false,
                ..cfg.clone()
            },
            &[],
            &node,
        )
        .unwrap();
        assert!(!without_node.contains(&parse_allow("192.168.5.1").unwrap()));
        let huge = IsolationConfig {
            allow_cidrs: (0..5000)
                .map(|i| format!("10.{}.{}.1", i / 256, i % 256))
                .collect(),
            ..Default::default()
        };
        let e = allow_list(&huge, &[], &[]).unwrap_err();
        assert!(e.contains("more than the 4096"), "{e}");
    }

    #[test]
    fn host_addresses_include_loopback() {
        let addrs = host_addresses();
        assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
    }
}
