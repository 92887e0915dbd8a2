//! What the kernel copies from each watched cgroup: the ports of the monitors that select its
//! pod and the share of connections they sample (the capture programs' `CAPTURE_FILTERS` map,
//! see [`CaptureFilter`]). Packets of other ports and of connections outside the sample cost the
//! kernel a map lookup or two and the agent nothing.

use palisade_api::agent::MonitorConfig;
use palisade_common::{CaptureFilter, CaptureFilterKey, CAPTURE_FILTER_CGROUP_ENTRY};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// The filter entries written to the kernel, and the sample's seed.
#[derive(Debug)]
pub struct CaptureFilters {
    written: FxHashMap<CaptureFilterKey, CaptureFilter>,
    seed: u32,
}

impl Default for CaptureFilters {
    fn default() -> Self {
        Self::new()
    }
}

impl CaptureFilters {
    /// With a seed drawn at random (std's per-process random hasher keys come from the OS).
    pub fn new() -> Self {
        use std::hash::{BuildHasher as _, Hasher as _};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self::with_seed(seed as u32)
    }

    pub fn with_seed(seed: u32) -> Self {
        CaptureFilters {
            written: FxHashMap::default(),
            seed,
        }
    }

    /// The entries of a cgroup of a pod that the monitors `selecting` (indexes into `monitors`)
    /// select: the cgroup's own, and one per port of theirs (when none of them watches every
    /// port), sampled at the highest percentage among the monitors watching that port (so
    /// each monitor sees at least its share).
    ///
    /// A monitor without ports watches every port. So does one that captures TLS: its
    /// plaintext is not bound to a port (the connections it decrypts may be on any), and is
    /// not sampled (plaintext from per-process probes is all of it): 100 %.
    pub fn entries_for(
        &self,
        cgroup_id: u64,
        monitors: &[MonitorConfig],
        selecting: &[usize],
    ) -> Vec<(CaptureFilterKey, CaptureFilter)> {
        let entry = |percent: u32, every_port: bool| CaptureFilter {
            sampling_percent: percent.clamp(1, 100) as u8,
            every_port: u8::from(every_port),
            sampling_seed: self.seed,
            ..Default::default()
        };
        let mut every_port: Option<u32> = None;
        let mut ports: BTreeMap<u16, u32> = BTreeMap::new();
        for m in selecting.iter().filter_map(|i| monitors.get(*i)) {
            let percent = match m.capture.as_ref().map_or(100, |c| c.sampling_percent) {
                _ if m.tls => 100,
                0 => 100, // not set
                p => p.min(100),
            };
            if m.tls || m.ports.is_empty() {
                every_port = Some(every_port.unwrap_or(0).max(percent));
            }
            for port in m
                .ports
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .filter(|p| *p != 0)
            {
                let e = ports.entry(port).or_insert(0);
                *e = (*e).max(percent);
            }
        }
        let own = CaptureFilterKey::new(cgroup_id, CAPTURE_FILTER_CGROUP_ENTRY);
        match every_port {
            // Every port, at the highest share any monitor asked for.
            Some(p) => vec![(own, entry(ports.values().copied().fold(p, u32::max), true))],
            None if ports.is_empty() => vec![(own, entry(100, true))],
            None => std::iter::once((own, entry(100, false)))
                .chain(
                    ports
                        .into_iter()
                        .map(|(port, p)| (CaptureFilterKey::new(cgroup_id, port), entry(p, false))),
                )
                .collect(),
        }
    }

    /// Writes the entries of `wanted` that the kernel does not hold yet and removes the others,
    /// through `write` (the capture backend's), in an order that never narrows capture more
    /// than the end state does (a cgroup without its own entry is captured whole; with its own
    /// entry, only its listed ports are):
    /// 1. the own entries of cgroups no longer watched are removed (they capture everything);
    /// 2. port entries are written, then own entries (a cgroup's ports exist before its own
    ///    entry restricts it to them);
    /// 3. port entries no longer wanted are removed.
    ///
    /// A failed write or removal leaves what this remembers of the kernel's map as it was, so
    /// the next sync tries again.
    pub fn sync(
        &mut self,
        wanted: FxHashMap<CaptureFilterKey, CaptureFilter>,
        mut write: impl FnMut(CaptureFilterKey, Option<&CaptureFilter>) -> Result<(), String>,
    ) {
        let own = |k: &CaptureFilterKey| k.local_port == CAPTURE_FILTER_CGROUP_ENTRY;
        let (mut stale_own, mut stale_ports): (Vec<CaptureFilterKey>, Vec<CaptureFilterKey>) = self
            .written
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .partition(|k| own(k));
        stale_own.sort_unstable();
        stale_ports.sort_unstable();
        let mut changed: Vec<(CaptureFilterKey, CaptureFilter)> = wanted
            .into_iter()
            .filter(|(k, f)| self.written.get(k) != Some(f))
            .collect();
        changed.sort_by_key(|(k, _)| (own(k), *k));
        if !changed.is_empty() || !stale_own.is_empty() {
            tracing::info!(
                written = changed.len(),
                cgroups = changed.iter().filter(|(k, _)| own(k)).count(),
                cgroups_removed = stale_own.len(),
                "capture filters: ports and sampling in the kernel"
            );
        }
        for key in stale_own {
            self.apply(key, None, &mut write);
        }
        for (key, filter) in changed {
            self.apply(key, Some(filter), &mut write);
        }
        for key in stale_ports {
            self.apply(key, None, &mut write);
        }
    }

    /// One write or removal, remembered when it succeeded.
    fn apply(
        &mut self,
        key: CaptureFilterKey,
        filter: Option<CaptureFilter>,
        write: &mut impl FnMut(CaptureFilterKey, Option<&CaptureFilter>) -> Result<(), String>,
    ) {
        match (write(key, filter.as_ref()), filter) {
            (Ok(()), Some(f)) => {
                self.written.insert(key, f);
            }
            (Ok(()), None) => {
                self.written.remove(&key);
            }
            (Err(error), _) => tracing::warn!(?key, %error, "updating a capture filter"),
        }
    }

    /// Cgroups with their own entry in the kernel.
    pub fn cgroups(&self) -> usize {
        self.written
            .keys()
            .filter(|k| k.local_port == CAPTURE_FILTER_CGROUP_ENTRY)
            .count()
    }

    /// The entries the kernel holds (as last written).
    pub fn written(&self) -> &FxHashMap<CaptureFilterKey, CaptureFilter> {
        &self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_api::agent::CaptureConfig;

    fn monitor(ports: &[u32], sampling_percent: u32, tls: bool) -> MonitorConfig {
        MonitorConfig {
            ports: ports.to_vec(),
            capture: Some(CaptureConfig {
                sampling_percent,
                ..Default::default()
            }),
            tls,
            ..Default::default()
        }
    }

    /// (port, every_port, percent) of each entry, the cgroup's own first (port 0).
    fn summary(entries: &[(CaptureFilterKey, CaptureFilter)]) -> Vec<(u16, u8, u8)> {
        let mut v: Vec<_> = entries
            .iter()
            .map(|(k, f)| (k.local_port, f.every_port, f.sampling_percent))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_pod_gets_its_monitors_ports_each_at_the_highest_sampling() {
        let filters = CaptureFilters::with_seed(9);
        let monitors = [
            monitor(&[8080, 9090], 10, false),
            monitor(&[8080, 7000], 40, false),
            monitor(&[], 5, false),
        ];
        let e = filters.entries_for(3, &monitors, &[0, 1]);
        assert_eq!(
            summary(&e),
            [(0, 0, 100), (7000, 0, 40), (8080, 0, 40), (9090, 0, 10)]
        );
        assert!(e.iter().all(|(k, f)| k.cgroup_id == 3 && f.sampling_seed == 9));
        // A monitor without ports watches every port, at the highest share asked for.
        assert_eq!(summary(&filters.entries_for(3, &monitors, &[0, 2])), [(0, 1, 10)]);
        assert_eq!(summary(&filters.entries_for(3, &monitors, &[2])), [(0, 1, 5)]);
        // Indexes past the config are ignored; no monitor at all: everything.
        assert_eq!(summary(&filters.entries_for(3, &monitors, &[7])), [(0, 1, 100)]);
    }

    #[test]
    fn tls_and_unset_sampling_capture_more_not_less() {
        let filters = CaptureFilters::with_seed(1);
        let tls = [monitor(&[8443], 10, true)];
        assert_eq!(summary(&filters.entries_for(1, &tls, &[0])), [(0, 1, 100)]);
        let unset = [monitor(&[8080], 0, false)];
        assert_eq!(
            summary(&filters.entries_for(1, &unset, &[0])),
            [(0, 0, 100), (8080, 0, 100)]
        );
    }

    #[test]
    fn sync_writes_changes_only_and_never_narrows_capture_on_the_way() {
        let mut filters = CaptureFilters::with_seed(3);
        let entries =
            |c: &CaptureFilters, id, percent| c.entries_for(id, &[monitor(&[8080], percent, false)], &[0]);
        let calls: std::cell::RefCell<Vec<(u64, u16, Option<u8>)>> = Default::default();
        let log = |k: CaptureFilterKey, f: Option<&CaptureFilter>| {
            calls
                .borrow_mut()
                .push((k.cgroup_id, k.local_port, f.map(|f| f.sampling_percent)));
            Ok(())
        };
        let first: FxHashMap<_, _> = entries(&filters, 1, 50).into_iter().collect();
        filters.sync(first.clone(), log);
        filters.sync(first, log);
        let second: FxHashMap<_, _> = entries(&filters, 2, 20).into_iter().collect();
        filters.sync(second, log);
        assert_eq!(
            *calls.borrow(),
            [
                (1, 8080, Some(50)),
                (1, 0, Some(100)),
                (1, 0, None),
                (2, 8080, Some(20)),
                (2, 0, Some(100)),
                (1, 8080, None),
            ]
        );
        // Listed ports to every port: the own entry widens capture before the port's goes.
        calls.borrow_mut().clear();
        let every: FxHashMap<_, _> = filters
            .entries_for(2, &[monitor(&[], 20, false)], &[0])
            .into_iter()
            .collect();
        filters.sync(every, log);
        assert_eq!(*calls.borrow(), [(2, 0, Some(20)), (2, 8080, None)]);
        assert_eq!((filters.cgroups(), filters.written().len()), (1, 1));

        // A failed write is not remembered: the next sync tries again.
        let third: FxHashMap<_, _> = entries(&filters, 5, 20).into_iter().collect();
        filters.sync(third.clone(), |k, _| {
            if k == CaptureFilterKey::new(5, 0) {
                Err("map full".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(filters.cgroups(), 0);
        let mut retried = vec![];
        filters.sync(third, |k, _| {
            retried.push(k.local_port);
            Ok(())
        });
        assert_eq!((retried, filters.cgroups()), (vec![0], 1));
    }
}
