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
//! library built differently, LibreSSL, BoringSSL, wrappers inlined), [`Library::internal_entries`]
//! returns the reason
//! and the agent probes the exported functions as before.
//!
//! OpenSSL 3.2 changed the write side: `ssl_write_internal` gained a flags argument before
//! `written` (now the fifth), and `SSL_write_ex` calls it through the new export `SSL_write_ex2`.
//! So when `SSL_write_ex2` is exported, the write pair is `SSL_write` and `SSL_write_ex2`, and the
//! entry probe reads `written` from the fifth argument ([`InternalEntries::write_flags`]).

use std::path::Path;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ObjectSymbolTable as _};

/// `call rel32` on x86-64.
const CALL_REL32: u8 = 0xe8;
/// `jmp rel32` on x86-64 (a tail call).
const JMP_REL32: u8 = 0xe9;
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

/// Which exported write functions to probe so that every write is seen exactly once (when the
/// exported functions are probed rather than the internal one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedWrites {
    pub write: bool,
    pub write_ex: bool,
    /// `SSL_write_ex2` (OpenSSL 3.2+), whose `written` is the fifth argument.
    pub write_ex2: bool,
}

impl ExportedWrites {
    /// OpenSSL before 3.2 (or a library this cannot read): `SSL_write` and `SSL_write_ex`.
    pub const WRITE_AND_WRITE_EX: ExportedWrites = ExportedWrites {
        write: true,
        write_ex: true,
        write_ex2: false,
    };
}

/// A libssl's file, read once for everything asked of it.
pub struct Library {
    data: Result<Vec<u8>, String>,
}

impl Library {
    /// Reads the library at `libssl` (a read error is kept, and answered by each question).
    pub fn read(libssl: &Path) -> Self {
        Library {
            data: std::fs::read(libssl).map_err(|e| format!("{}: {e}", libssl.display())),
        }
    }

    /// Its internal entry points, or why they were not found.
    pub fn internal_entries(&self) -> Result<InternalEntries, NotFound> {
        match &self.data {
            Ok(data) => find_in(data),
            Err(e) => Err(NotFound::Read(e.clone())),
        }
    }

    /// The exported write functions to probe. OpenSSL 3.2+ exports `SSL_write_ex2`, and its
    /// `SSL_write_ex` is `jmp SSL_write_ex2@plt`: probing both would see such a write twice
    /// (nested), probing `SSL_write_ex` alone would miss programs that call `SSL_write_ex2`. So
    /// `SSL_write_ex2` is probed, and a wrapper is left out only when its code is seen to call or
    /// jump to it (a build that inlined it keeps both, which then do not nest). A library that
    /// cannot be read: the two of OpenSSL before 3.2.
    pub fn exported_writes(&self) -> ExportedWrites {
        self.data
            .as_ref()
            .map_or(ExportedWrites::WRITE_AND_WRITE_EX, |data| {
                exported_writes_in(data)
            })
    }
}

fn exported_writes_in(data: &[u8]) -> ExportedWrites {
    let Ok(file) = object::File::parse(data) else {
        return ExportedWrites::WRITE_AND_WRITE_EX;
    };
    if code_of(&file, "SSL_write_ex2").is_err() {
        return ExportedWrites::WRITE_AND_WRITE_EX;
    }
    ExportedWrites {
        write: !reaches(&file, "SSL_write", "SSL_write_ex2"),
        write_ex: !reaches(&file, "SSL_write_ex", "SSL_write_ex2"),
        write_ex2: true,
    }
}

/// Whether the exported function `from` calls or jumps to the exported function `to`: directly,
/// or through `to`'s PLT stub (how a shared library calls its own exports).
fn reaches(file: &object::File<'_>, from: &'static str, to: &'static str) -> bool {
    let (Ok(code), Ok(to_code)) = (code_of(file, from), code_of(file, to)) else {
        return false;
    };
    rel32_targets(&code, &[CALL_REL32, JMP_REL32])
        .into_iter()
        .any(|target| target == to_code.address || plt_stub_for(file, target) == Some(to))
}

/// The symbol whose PLT stub is at `address`, if one is: the stub's `jmp *slot(%rip)` (after an
/// optional `endbr64` and `bnd` prefix) reads a GOT slot that a dynamic relocation names.
fn plt_stub_for<'a>(file: &object::File<'a>, address: u64) -> Option<&'a str> {
    let section = section_at(file, address).ok()?;
    if !matches!(section.name(), Ok(".plt" | ".plt.sec")) {
        return None;
    }
    let data = section.data().ok()?;
    let start = usize::try_from(address - section.address()).ok()?;
    let stub = data.get(start..data.len().min(start + 16))?;
    let at = [0, 4, 5]
        .into_iter()
        .find(|&i| stub.get(i..i + 2) == Some(&[0xff, 0x25][..]))?;
    let disp = i32::from_le_bytes(stub.get(at + 2..at + 6)?.try_into().ok()?);
    let slot = (address + at as u64 + 6).wrapping_add_signed(i64::from(disp));
    let (_, relocation) = file.dynamic_relocations()?.find(|(offset, _)| *offset == slot)?;
    let object::RelocationTarget::Symbol(index) = relocation.target() else {
        return None;
    };
    file.dynamic_symbol_table()?
        .symbol_by_index(index)
        .ok()?
        .name()
        .ok()
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
    rel32_targets(code, &[CALL_REL32])
}

/// Distinct targets of the byte sequences in `code` that decode as one of the rel32 branches
/// `opcodes`, in order (spurious ones included, as for [`call_targets`]).
fn rel32_targets(code: &Code<'_>, opcodes: &[u8]) -> Vec<u64> {
    let mut targets = Vec::new();
    for (i, window) in code.bytes.windows(5).enumerate() {
        if !opcodes.contains(&window[0]) {
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
        // SSL_write_ex of OpenSSL 3.6.3: a tail call, seen as a jump target only.
        let tail = [0x49, 0x89, 0xc8, 0x31, 0xc9, 0xe9, 0x36, 0xaf, 0xfe, 0xff];
        let at = |bytes: &[u8]| Code {
            address: 0x57d20,
            bytes: bytes.to_vec().leak(),
        };
        assert!(call_targets(&at(&tail)).is_empty());
        assert_eq!(rel32_targets(&at(&tail), &[CALL_REL32, JMP_REL32]), vec![0x42c60]);
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
        // OpenSSL 3.0 and 3.1 (Debian 12) or 3.2+ (Debian 13): the write side differs.
        let file = object::File::parse(&*data).unwrap();
        let from_3_2 = code_of(&file, "SSL_write_ex2").is_ok();
        assert_eq!(
            entries.write_flags, from_3_2,
            "ssl_write_internal takes flags from 3.2"
        );
        let writes = exported_writes_in(&data);
        assert_eq!(writes.write_ex2, from_3_2);
        if !from_3_2 {
            assert_eq!(writes, ExportedWrites::WRITE_AND_WRITE_EX);
        }
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
        let data = std::fs::read(Path::new(&dir).join("libssl.so.3")).unwrap();
        let file = object::File::parse(&*data).unwrap();
        // SSL_write_ex is `jmp SSL_write_ex2@plt`; SSL_write calls the internal function.
        assert!(reaches(&file, "SSL_write_ex", "SSL_write_ex2"));
        assert!(!reaches(&file, "SSL_write", "SSL_write_ex2"));
        assert_eq!(
            exported_writes_in(&data),
            ExportedWrites {
                write: true,
                write_ex: false,
                write_ex2: true
            }
        );
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
        let missing = Library::read(Path::new("/nonexistent/libssl.so.3"));
        assert_eq!(missing.exported_writes(), ExportedWrites::WRITE_AND_WRITE_EX);
        assert!(matches!(missing.internal_entries(), Err(NotFound::Read(_))));
    }
}
