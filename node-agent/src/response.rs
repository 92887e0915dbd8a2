//! Response: what the agent does about findings. `blockSource` drops the source's traffic to the
//! protected pod in the kernel until its TTL ends (enforce mode), or records that it would have
//! (audit mode). Every start, adoption, expiry, release or failure becomes an [`ActionRecord`]
//! for the operator, kept until a report delivers it.
//!
//! The kernel enforces expiry by itself (see `palisade_common::BlockValue`); the agent removes
//! expired entries and reports them. Blocks survive the agent: a restarted agent adopts the
//! entries it finds for pods it still protects and removes the others.

use crate::runtime::CaptureBackend;
use palisade_api::agent::{ActionRecord, ObjectRef};
use palisade_common::{BlockKey, BlockValue};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

type PolicyKey = (String, String);

fn policy_key(p: &ObjectRef) -> PolicyKey {
    (p.namespace.clone(), p.name.clone())
}

/// The kernel map key for a source of a pod cgroup (IPv4 as IPv4-mapped IPv6).
pub fn block_key(cgroup_id: u64, source: IpAddr) -> BlockKey {
    let addr = match source {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    BlockKey { cgroup_id, addr }
}

fn key_source(key: &BlockKey) -> String {
    let v6 = std::net::Ipv6Addr::from(key.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

/// A block (enforced, or in audit mode only recorded) and what it is for.
#[derive(Clone, Debug)]
struct Block {
    policy: ObjectRef,
    rule: String,
    pod_namespace: String,
    pod_name: String,
    enforced: bool,
    expires_ns: u64,
}

/// What a finding asks for: block `source` from the pod for `ttl_ns`.
pub struct BlockRequest<'a> {
    pub policy: &'a ObjectRef,
    pub rule: &'a str,
    pub enforce: bool,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub cgroup_id: u64,
    pub source: IpAddr,
    pub ttl_ns: u64,
}

/// Blocks in force (or recorded, in audit mode), and action records not yet reported.
#[derive(Default)]
pub struct Responder {
    blocks: HashMap<BlockKey, Block>,
    pending: BTreeMap<PolicyKey, Vec<ActionRecord>>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns (records carry Unix times).
    clock_offset_ns: i64,
}

impl Responder {
    pub fn new(clock_offset_ns: i64) -> Self {
        Responder {
            clock_offset_ns,
            ..Default::default()
        }
    }

    fn unix_ms(&self, mono_ns: u64) -> i64 {
        (mono_ns as i64).saturating_add(self.clock_offset_ns) / 1_000_000
    }

    fn record(
        &mut self,
        key: &BlockKey,
        block: &Block,
        state: &str,
        now_ns: u64,
        dropped: u64,
        detail: String,
    ) {
        let record = ActionRecord {
            rule: block.rule.clone(),
            action: "blockSource".into(),
            source: key_source(key),
            pod_namespace: block.pod_namespace.clone(),
            pod_name: block.pod_name.clone(),
            enforced: block.enforced,
            state: state.into(),
            expires_unix_ms: self.unix_ms(block.expires_ns),
            dropped_packets: dropped,
            at_unix_ms: self.unix_ms(now_ns),
            detail,
        };
        tracing::info!(
            policy = %block.policy.name, rule = %record.rule, source = %record.source,
            pod = %format!("{}/{}", record.pod_namespace, record.pod_name),
            enforced = record.enforced, state = %record.state, detail = %record.detail, "blockSource"
        );
        self.pending
            .entry(policy_key(&block.policy))
            .or_default()
            .push(record);
    }

    /// Blocks a source (enforce) or records that it would have been (audit), unless a block of
    /// that source for that pod is already in force. True when a block was put in the kernel.
    pub fn block_source<B: CaptureBackend>(
        &mut self,
        backend: Option<&mut B>,
        req: BlockRequest,
        now_ns: u64,
    ) -> bool {
        let key = block_key(req.cgroup_id, req.source);
        // A block in force stays as it is; an audit-mode record gives way to enforcement (the
        // policy switched to enforce).
        if self
            .blocks
            .get(&key)
            .is_some_and(|b| b.expires_ns > now_ns && (b.enforced || !req.enforce))
        {
            return false;
        }
        let mut block = Block {
            policy: req.policy.clone(),
            rule: req.rule.to_string(),
            pod_namespace: req.pod_namespace.to_string(),
            pod_name: req.pod_name.to_string(),
            enforced: req.enforce,
            expires_ns: now_ns.saturating_add(req.ttl_ns),
        };
        let mut state = "started";
        let mut detail = String::new();
        if req.enforce {
            let result = match backend {
                Some(b) => b.block(key, block.expires_ns),
                None => Err("the capture programs are not loaded on this node".into()),
            };
            if let Err(reason) = result {
                // Recorded once per TTL, not retried on every finding.
                block.enforced = false;
                state = "failed";
                detail = reason;
            }
        }
        self.record(&key, &block, state, now_ns, 0, detail);
        let enforced = block.enforced;
        self.blocks.insert(key, block);
        enforced
    }

    /// Ends the blocks whose TTL has passed (the kernel already stopped dropping).
    pub fn expire<B: CaptureBackend>(&mut self, backend: Option<&mut B>, now_ns: u64) {
        self.end(backend, |_, b| b.expires_ns <= now_ns, "expired", now_ns);
    }

    /// Removes the blocks `ending` selects (from the kernel too) and records how they ended.
    fn end<B: CaptureBackend>(
        &mut self,
        mut backend: Option<&mut B>,
        ending: impl Fn(&BlockKey, &Block) -> bool,
        state: &str,
        now_ns: u64,
    ) {
        let ended: Vec<BlockKey> = self
            .blocks
            .iter()
            .filter(|(k, b)| ending(k, b))
            .map(|(k, _)| *k)
            .collect();
        for key in ended {
            let Some(block) = self.blocks.remove(&key) else {
                continue;
            };
            let dropped = match (&mut backend, block.enforced) {
                (Some(b), true) => b.unblock(&key).unwrap_or(0),
                _ => 0,
            };
            self.record(&key, &block, state, now_ns, dropped, String::new());
        }
    }

    /// Ends every block of policies not in `keep` (deleted, or no longer enforcing), and of pods
    /// (cgroup ids) not in `protected`.
    pub fn release_others<B: CaptureBackend>(
        &mut self,
        backend: Option<&mut B>,
        keep: &dyn Fn(&ObjectRef, u64) -> bool,
        now_ns: u64,
    ) {
        self.end(backend, |k, b| !keep(&b.policy, k.cgroup_id), "released", now_ns);
    }

    /// Takes over the kernel's blocks left by an earlier agent: those of a pod this agent
    /// protects (by cgroup id, with the policy now protecting it) continue to their expiry;
    /// the others are removed.
    pub fn adopt<B: CaptureBackend>(
        &mut self,
        backend: &mut B,
        entries: Vec<(BlockKey, BlockValue)>,
        owner: &dyn Fn(u64) -> Option<(ObjectRef, String, String, String)>,
        now_ns: u64,
    ) {
        for (key, value) in entries {
            if self.blocks.contains_key(&key) {
                continue;
            }
            match owner(key.cgroup_id) {
                Some((policy, rule, pod_namespace, pod_name)) if value.expires_ns > now_ns => {
                    let block = Block {
                        policy,
                        rule,
                        pod_namespace,
                        pod_name,
                        enforced: true,
                        expires_ns: value.expires_ns,
                    };
                    self.record(
                        &key,
                        &block,
                        "adopted",
                        now_ns,
                        value.dropped_packets,
                        String::new(),
                    );
                    self.blocks.insert(key, block);
                }
                _ => {
                    let _ = backend.unblock(&key);
                    tracing::info!(source = %key_source(&key), cgroup_id = key.cgroup_id, "stale block removed");
                }
            }
        }
    }

    /// Blocks enforced in the kernel now.
    pub fn active(&self) -> usize {
        self.blocks.values().filter(|b| b.enforced).count()
    }

    /// Queues a record of another action (an isolation a rule triggered) for its policy.
    pub fn push(&mut self, policy: &ObjectRef, record: ActionRecord) {
        self.pending.entry(policy_key(policy)).or_default().push(record);
    }

    pub fn take(&mut self) -> BTreeMap<PolicyKey, Vec<ActionRecord>> {
        std::mem::take(&mut self.pending)
    }

    pub fn restore(&mut self, policy: &ObjectRef, records: Vec<ActionRecord>) {
        if records.is_empty() {
            return;
        }
        let pending = self.pending.entry(policy_key(policy)).or_default();
        let newer = std::mem::take(pending);
        *pending = records;
        pending.extend(newer);
    }
}
