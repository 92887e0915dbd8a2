//! Plaintext HTTP capture with `cgroup_skb` programs (see `node-agent-ebpf`).
//!
//! [`CaptureProbes`] loads the embedded eBPF object and attaches its ingress and egress programs to
//! the cgroup v2 directories of monitored pods; [`CaptureRing`] drains the records they produce, from
//! one ring buffer per CPU merged by timestamp.
//! Every error carries the kernel's reason (the errno text and, for a refused program, the tail of
//! the verifier log).

mod enforce;
mod merge;
pub mod openssl_entry;
mod probes;
mod ring;
mod ring_reader;
pub mod tls;

use std::{error::Error as StdError, fmt::Write as _, io, path::PathBuf};

pub use enforce::{AllowPrefix, EnforcementAttach};
pub use merge::MERGE_SLACK_NS;
pub use probes::CaptureProbes;
pub use ring::{CaptureRing, RingDrain};

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns` (capture timestamps, the ring
/// merge's watermark) and of the kernel's block expiries.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Longest verifier-log excerpt kept in an error (its tail, where the verifier names the problem).
const VERIFIER_LOG_EXCERPT: usize = 480;

/// Why loading, attaching or reading the capture programs failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The embedded object could not be parsed or one of its maps could not be created.
    #[error("loading the embedded eBPF object refused: {reason}")]
    Object { reason: String },

    /// `BPF_PROG_LOAD` failed for one of the programs.
    #[error(
        "BPF_PROG_LOAD for cgroup_skb program `{program}` refused: {reason}{}",
        verifier_suffix(verifier_log)
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

    /// A map exists but could not be used.
    #[error("map `{map}`: {reason}")]
    Map { map: &'static str, reason: String },

    /// The cgroup directory could not be opened or inspected.
    #[error("cannot open cgroup directory {}: {reason}", path.display())]
    CgroupOpen { path: PathBuf, reason: String },

    /// The path is not on a cgroup v2 file system.
    #[error(
        "{} is not a cgroup v2 directory (file system magic {magic:#x}); cgroup_skb programs attach \
         only to the unified hierarchy (look for the cgroup2 mount in /proc/self/mountinfo)",
        path.display()
    )]
    NotCgroup2 { path: PathBuf, magic: u64 },

    /// The kernel refused to attach a program to the cgroup.
    #[error("attaching `{program}` ({direction}) to cgroup {} refused: {reason}", path.display())]
    Attach {
        program: &'static str,
        direction: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// The kernel refused to detach a program from the cgroup.
    #[error("detaching `{program}` from cgroup {} failed: {reason}", path.display())]
    Detach {
        program: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// [`CaptureProbes::take_ring`] was called twice.
    #[error("the capture ring buffer was already taken")]
    RingTaken,
}

fn verifier_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; verifier log (tail): {log}")
    }
}

/// Formats an error and all its sources ("a: b: c"), skipping a source whose text the previous
/// message already contains. aya hides the errno in `source()`: this is where it comes back.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    out
}

/// Adds a hint for permission errors, in words a platform engineer can act on.
pub(crate) fn with_permission_hint(reason: String, io_error: Option<&io::Error>) -> String {
    match io_error.and_then(io::Error::raw_os_error) {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "{reason} (the agent needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN, and must not \
             be blocked by seccomp or an LSM policy)"
        ),
        _ => reason,
    }
}

/// Keeps the last `max` bytes of a verifier log (on a char boundary), trimmed.
pub(crate) fn log_tail(log: &str, max: usize) -> String {
    let log = log.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if log.len() <= max {
        return log.to_owned();
    }
    let mut start = log.len() - max;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &log[start..])
}

pub(crate) fn verifier_excerpt(log: &str) -> String {
    log_tail(log, VERIFIER_LOG_EXCERPT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_end() {
        assert_eq!(log_tail("abc\0\n", 10), "abc");
        assert_eq!(log_tail("0123456789", 4), "...6789");
        // multi-byte characters are not cut
        let t = log_tail("ééééé", 3);
        assert!(t.starts_with("..."));
        assert!(t.len() <= 6);
    }

    #[test]
    fn error_chain_includes_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let e = Outer(io::Error::from_raw_os_error(libc::EPERM));
        let s = error_chain(&e);
        assert!(s.starts_with("outer: "), "{s}");
        assert!(s.contains("os error 1"), "{s}");
    }

    #[test]
    fn display_of_program_load() {
        let e = CaptureError::ProgramLoad {
            program: "p",
            reason: "Operation not permitted (os error 1)".into(),
            verifier_log: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "BPF_PROG_LOAD for cgroup_skb program `p` refused: Operation not permitted (os error 1)"
        );
    }
}
