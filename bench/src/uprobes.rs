//! How the kernel returns from a uretprobe in a traced process: through the `uretprobe` system
//! call (x86-64, Linux 6.11 and later: one `syscall` instead of a second breakpoint trap) or
//! through an `int3` breakpoint (older kernels, other architectures, and processes running with
//! a user shadow stack, for which the kernel keeps the breakpoint).
//!
//! The trampoline itself lives in the process's `[uprobes]` page, which `/proc/<pid>/mem` cannot
//! read (EIO: a special mapping), so this is inferred from what decides it: the system call in
//! the kernel's symbol table, and the process's shadow-stack state in `/proc/<pid>/status`.

use anyhow::{Context, Result};

/// The uretprobe return path of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReturnPath {
    /// The `uretprobe` system call.
    Syscall,
    /// A breakpoint trap, and why.
    Breakpoint(&'static str),
}

impl ReturnPath {
    pub fn describe(&self) -> String {
        match self {
            ReturnPath::Syscall => "the `uretprobe` system call (the x86-64 fast return path: `__x64_sys_uretprobe` is in /proc/kallsyms and the process has no shadow stack)".into(),
            ReturnPath::Breakpoint(why) => format!("a breakpoint trap ({why})"),
        }
    }
}

/// Decides from the kernel's symbols (`/proc/kallsyms`) and the process's status.
fn decide(kallsyms: &str, status: &str) -> ReturnPath {
    let has_syscall = kallsyms
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("__x64_sys_uretprobe"));
    if !has_syscall {
        return ReturnPath::Breakpoint("this kernel has no uretprobe system call");
    }
    let shadow_stack = status
        .lines()
        .find(|l| l.starts_with("x86_Thread_features:"))
        .is_some_and(|l| l.split_whitespace().any(|w| w == "shstk"));
    if shadow_stack {
        return ReturnPath::Breakpoint("the process runs with a user shadow stack");
    }
    ReturnPath::Syscall
}

/// The uretprobe return path of process `pid` on this kernel.
pub fn return_path(pid: u32) -> Result<ReturnPath> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(decide(&kallsyms, &status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_unless_missing_or_shadow_stacked() {
        let with = "ffffffff81337c00 T __x64_sys_uretprobe\n";
        assert_eq!(decide(with, "Name:\tnginx\n"), ReturnPath::Syscall);
        assert_eq!(
            decide(with, "x86_Thread_features:\tshstk wrss\n"),
            ReturnPath::Breakpoint("the process runs with a user shadow stack")
        );
        assert!(matches!(
            decide("ffffffff81000000 T __x64_sys_read\n", ""),
            ReturnPath::Breakpoint(_)
        ));
    }
}
