//! Where in libssl to place the TLS uprobes so that each read and write costs less.
//!
//! `SSL_read` and `SSL_read_ex` are thin wrappers around one internal function,
//! `ssl_read_internal(ssl, buf, num, &readbytes)` (OpenSSL 1.1.1 and 3.x; `SSL_write` and
//! `SSL_write_ex` likewise around `ssl_write_internal(ssl, buf, num, &written)`), which returns
//! a positive value on success with the byte count stored through its fourth argument: the
//! calling convention of the `_ex` functions. Probing the internal functions instead of the four
//! exported ones gives the same plaintext with the same probe programs, and is much cheaper on
//! x86-64: the exported wrappers begin with `sub $n, %rsp`, an instruction the kernel cannot
//! emulate, so every hit also executes it out of line under a single-step trap (measured at tens
//! of microseconds per hit on the reference VMs, see docs/benchmarks-tls.md), while the internal
//! functions begin with `push %reg`, which the kernel emulates inside the breakpoint trap.
//!
//! The internal functions are not exported, so they are found in the wrappers' machine code:
//! the target of a `call rel32` that both `SSL_read` and `SSL_read_ex` make (and that is the
//! only target they share), and the same for the write pair. When the pair does not agree (a
//! library built differently, LibreSSL, BoringSSL, wrappers inlined), [`find`] returns the reason
//! and the agent probes the exported functions as before.
//!
//! OpenSSL 3.2 changed the write side: `ssl_write_internal` gained a flags argument before
//! `written` (now the fifth), and `SSL_write_ex` calls it through the new export `SSL_write_ex2`.
//! So when `SSL_write_ex2` is exported, the write pair is `SSL_write` and `SSL_write_ex2`, and the
//! entry probe reads `written` from the fifth argument ([`InternalEntries::write_flags`]).

use std::path::Path;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// `call rel32` on x86-64.
const CALL_REL32: u8 = 0xe8;
/// Largest wrapper body scanned, bytes (the OpenSSL 3.0 wrappers are 0x1d to 0x83 bytes).
const MAX_WRAPPER_BYTES: u64 = 512;

/// File offsets (for a uprobe's `AbsoluteOffset`) of the internal read and write functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalEntries {
    pub read: u64,
    pub write: u64,
    /// The write function takes flags before `written` (OpenSSL 3.2+: `ssl_write_internal(ssl,
    /// buf, num, flags, &written)`).
    pub write_flags: bool,
}

/// Why the internal functions were not used (the exported ones are probed instead).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotFound {
    #[error("reading {0}")]
    Read(String),
    #[error("not an x86-64 ELF library this agent can parse: {0}")]
    Format(String),
    #[error("{0} is not exported")]
    MissingSymbol(&'static str),
    #[error("{wrapper} and {other} share {shared} call targets, want exactly one")]
    Ambiguous {
        wrapper: &'static str,
        other: &'static str,
        shared: usize,
    },
    #[error("the read and write wrappers call the same function")]
    SameTarget,
}

/// A function's machine code and where it lies in the file.
struct Code<'a> {
    address: u64,
    bytes: &'a [u8],
}

/// Whether the library at `libssl` exports `SSL_write_ex2` (OpenSSL 3.2+), through which
/// `SSL_write_ex` writes; false when the file cannot be read or parsed.
pub fn exports_write_ex2(libssl: &Path) -> bool {
    std::fs::read(libssl).is_ok_and(|data| {
        object::File::parse(&*data).is_ok_and(|file| code_of(&file, "SSL_write_ex2").is_ok())
    })
}

/// The internal entry points of the OpenSSL library at `libssl`, or why they were not found.
pub fn find(libssl: &Path) -> Result<InternalEntries, NotFound> {
    let data = std::fs::read(libssl).map_err(|e| NotFound::Read(format!("{}: {e}", libssl.display())))?;
    find_in(&data)
}

fn find_in(data: &[u8]) -> Result<InternalEntries, NotFound> {
    let file = object::File::parse(data).map_err(|e| NotFound::Format(e.to_string()))?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(NotFound::Format(format!("{:?}", file.architecture())));
    }
    let read = shared_call_target(&file, "SSL_read", "SSL_read_ex")?;
    let write_flags = code_of(&file, "SSL_write_ex2").is_ok();
    let write_pair = if write_flags {
        "SSL_write_ex2"
    } else {
        "SSL_write_ex"
    };
    let write = shared_call_target(&file, "SSL_write", write_pair)?;
    if read == write {
        return Err(NotFound::SameTarget);
    }
    Ok(InternalEntries {
        read: file_offset(&file, read)?,
        write: file_offset(&file, write)?,
        write_flags,
    })
}

/// The one `call rel32` target that the exported functions `a` and `b` both have.
fn shared_call_target(file: &object::File<'_>, a: &'static str, b: &'static str) -> Result<u64, NotFound> {
    let targets_a = call_targets(&code_of(file, a)?);
    let targets_b = call_targets(&code_of(file, b)?);
    let shared: Vec<u64> = targets_a
        .iter()
        .copied()
        .filter(|t| targets_b.contains(t))
        .collect();
    match shared[..] {
        [one] => Ok(one),
        _ => Err(NotFound::Ambiguous {
            wrapper: a,
            other: b,
            shared: shared.len(),
        }),
    }
}

/// The code of the exported function `name` (its dynamic symbol's address and size).
fn code_of<'a>(file: &object::File<'a>, name: &'static str) -> Result<Code<'a>, NotFound> {
    let sym = file
        .dynamic_symbols()
        .find(|s| s.is_definition() && s.name() == Ok(name))
        .ok_or(NotFound::MissingSymbol(name))?;
    let (address, size) = (sym.address(), sym.size().clamp(1, MAX_WRAPPER_BYTES));
    let section = section_at(file, address)?;
    let data = section.data().map_err(|e| NotFound::Format(e.to_string()))?;
    let start = (address - section.address()) as usize;
    let end = (start + size as usize).min(data.len());
    Ok(Code {
        address,
        bytes: &data[start..end],
    })
}

/// Distinct targets of every byte sequence that decodes as `call rel32` in `code`, in order.
/// Scanning bytes rather than instructions may find a spurious target inside another
/// instruction; [`shared_call_target`] only accepts a target both wrappers call.
fn call_targets(code: &Code<'_>) -> Vec<u64> {
    let mut targets = Vec::new();
    for (i, window) in code.bytes.windows(5).enumerate() {
        if window[0] != CALL_REL32 {
            continue;
        }
        let rel = i32::from_le_bytes([window[1], window[2], window[3], window[4]]);
        let next = code.address + i as u64 + 5;
        let target = next.wrapping_add_signed(i64::from(rel));
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    targets
}

fn section_at<'a, 'f>(file: &'f object::File<'a>, address: u64) -> Result<object::Section<'a, 'f>, NotFound> {
    file.sections()
        .find(|s| s.address() <= address && address < s.address() + s.size())
        .ok_or_else(|| NotFound::Format(format!("no section holds address {address:#x}")))
}

/// The file offset of a code address (the address must lie in a section with file data).
fn file_offset(file: &object::File<'_>, address: u64) -> Result<u64, NotFound> {
    let section = section_at(file, address)?;
    let (offset, _) = section.file_range().ok_or_else(|| {
        NotFound::Format(format!(
            "address {address:#x} lies in a section without file data"
        ))
    })?;
    Ok(offset + (address - section.address()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(address: u64, bytes: &[u8]) -> Vec<u64> {
        call_targets(&Code { address, bytes })
    }

    #[test]
    fn decodes_call_targets_forwards_and_backwards() {
        // SSL_read_ex of Debian's OpenSSL 3.0.19: sub $8,%rsp; call 0x35290; ...
        let ex = [0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31, 0xd2];
        assert_eq!(code(0x354c0, &ex), vec![0x35290]);
        let forward = [0xe8, 0x10, 0x00, 0x00, 0x00];
        assert_eq!(code(0x1000, &forward), vec![0x1015]);
        assert!(code(0x1000, &[0xe8, 0x00]).is_empty());
    }

    /// The library on this machine, when it is OpenSSL 3 on x86-64: both pairs agree and the
    /// internal functions begin with a `push`, which the kernel emulates.
    #[test]
    fn finds_the_internal_functions_of_the_system_openssl() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let Ok(data) = std::fs::read(lib) else {
            println!(
                "SKIPPED: finds_the_internal_functions_of_the_system_openssl: no {}",
                lib.display()
            );
            return;
        };
        let entries = find_in(&data).expect("internal entries");
        assert_ne!(entries.read, entries.write);
        assert!(
            !entries.write_flags,
            "OpenSSL 3.0's ssl_write_internal has no flags"
        );
        assert!(!exports_write_ex2(lib), "OpenSSL 3.0 has no SSL_write_ex2");
        for offset in [entries.read, entries.write] {
            let first = &data[offset as usize..offset as usize + 2];
            let is_push =
                (0x50..=0x57).contains(&first[0]) || (first[0] == 0x41 && (0x50..=0x57).contains(&first[1]));
            let is_endbr = data[offset as usize..offset as usize + 4] == [0xf3, 0x0f, 0x1e, 0xfa];
            assert!(
                is_push || is_endbr,
                "unexpected first bytes {first:02x?} at {offset:#x}"
            );
        }
    }

    /// OpenSSL 3.6 (hack/build-openssl.sh builds it, hack/test.sh sets `PALISADE_OPENSSL_LIB`):
    /// the write pair is `SSL_write` and `SSL_write_ex2`, and its target takes flags (`SSL_write_ex`
    /// shares no call target with `SSL_write`: it calls `SSL_write_ex2`).
    #[test]
    fn finds_the_internal_functions_of_openssl_3_6() {
        let Some(dir) = std::env::var_os("PALISADE_OPENSSL_LIB") else {
            println!(
                "SKIPPED: finds_the_internal_functions_of_openssl_3_6: PALISADE_OPENSSL_LIB is not set (bash hack/build-openssl.sh prints it)"
            );
            return;
        };
        let lib = Path::new(&dir).join("libssl.so.3");
        assert!(exports_write_ex2(&lib));
        let data = std::fs::read(&lib).unwrap();
        let file = object::File::parse(&*data).unwrap();
        assert_eq!(
            shared_call_target(&file, "SSL_write", "SSL_write_ex"),
            Err(NotFound::Ambiguous {
                wrapper: "SSL_write",
                other: "SSL_write_ex",
                shared: 0
            })
        );
        let entries = find_in(&data).expect("internal entries");
        assert!(entries.write_flags);
        assert_ne!(entries.read, entries.write);
    }

    #[test]
    fn a_non_elf_file_is_refused() {
        assert!(matches!(find_in(b"not an elf"), Err(NotFound::Format(_))));
        assert!(!exports_write_ex2(Path::new("/nonexistent/libssl.so.3")));
    }
}
