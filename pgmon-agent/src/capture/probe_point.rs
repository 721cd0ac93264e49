//! Where in a libssl function to plant its entry uprobe.
//!
//! A uprobe replaces one instruction with `int3`. When the probe fires, x86 Linux either
//! *emulates* the displaced instruction in the kernel (direct `jmp`/`call`/`jcc`, `push reg`,
//! `nop`: `branch_setup_xol_ops` and `push_setup_xol_ops` in `arch/x86/kernel/uprobes.c`) or
//! *single-steps* a copy of it out of line, which takes a second trap. On this project's
//! machines (Firecracker guests, kernel 6.18) the second trap is what costs: measured with a
//! tracefs uprobe and no BPF program, a call of `SSL_get_error` took 22 µs with the probe on
//! its first instruction (`xor eax,eax`, single-stepped) and 0.62 µs with it on the `jle`
//! four bytes later (emulated); see `bench/TLS.md`.
//!
//! So each probe goes on the first instruction of the function's straight-line prologue that
//! the kernel emulates, when decoding proves that this is the same as probing the entry:
//! - every instruction before it falls through (no branch, call or return),
//! - none of them writes an argument register (`rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`, in
//!   any width): the programs read the arguments from the registers (System V AMD64 ABI),
//! - no direct branch of the function lands inside that prologue, so the probe fires once
//!   per call as an entry probe does. (Targets of indirect jumps, e.g. jump tables, cannot be
//!   known from the bytes; a compiler does not place a case label inside a prologue.)
//!
//! When no such instruction exists, the probe stays on the entry and is single-stepped.
//! Nothing here writes to the library or guesses an offset: the offset comes from decoding
//! the bytes the kernel will patch.

use std::path::Path;

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register,
};
use object::{Object, ObjectSection, ObjectSymbol};

/// How many instructions of a prologue are looked at before settling for the entry.
const MAX_PROLOGUE: usize = 16;

/// The argument registers of the System V AMD64 calling convention, as full registers.
const ARGUMENT_REGISTERS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// Where to attach the probe of one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// Offset of the probed instruction in the library file (what the kernel's uprobe API
    /// takes), bytes.
    pub file_offset: u64,
    /// Offset of the probed instruction from the function's first byte, bytes.
    pub offset_in_function: u64,
    /// Whether the kernel emulates the probed instruction (one trap per hit) rather than
    /// single-stepping it (two).
    pub emulated: bool,
    /// The probed instruction's mnemonic, e.g. `jle` (for `status`).
    pub instruction: String,
}

impl ProbePoint {
    /// `SSL_read+0x16 (js, emulated)` or `SSL_accept (single-stepped: why)`.
    pub fn describe(&self, function: &str, why_not: Option<&str>) -> String {
        let mnemonic = &self.instruction;
        match (self.emulated, why_not) {
            (true, _) => format!(
                "{function}+{:#x} ({mnemonic}, emulated)",
                self.offset_in_function
            ),
            (false, Some(why)) => format!("{function} ({mnemonic}, single-stepped: {why})"),
            (false, None) => format!("{function} ({mnemonic}, single-stepped)"),
        }
    }
}

/// Why the function's bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PointError {
    /// The library could not be read.
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    /// Not an ELF file object understands.
    #[error("{0} is not a readable ELF object")]
    Parse(String, #[source] object::Error),
    /// Not x86-64: the decoding rules here are the x86 kernel's.
    #[error("{0} is not an x86-64 object")]
    Architecture(String),
    /// No defined function of that name in `.dynsym` or `.symtab`.
    #[error("{library} defines no function {function}")]
    NoSymbol {
        /// The library.
        library: String,
        /// The function.
        function: String,
    },
}

/// The probe point of `function` in the ELF library `library`, and when it is the entry,
/// why no later instruction would do (`None` when an emulated one was found).
pub fn probe_point(
    library: &Path,
    function: &str,
) -> Result<(ProbePoint, Option<String>), PointError> {
    let name = library.display().to_string();
    let data = std::fs::read(library).map_err(|e| PointError::Read(name.clone(), e))?;
    let file = object::File::parse(&*data).map_err(|e| PointError::Parse(name.clone(), e))?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(PointError::Architecture(name));
    }
    let no_symbol = || PointError::NoSymbol {
        library: name.clone(),
        function: function.to_owned(),
    };
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.is_definition() && s.name() == Ok(function))
        .ok_or_else(no_symbol)?;
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or_else(no_symbol)?;
    let (section_file_start, _) = section.file_range().ok_or_else(no_symbol)?;
    let code = section
        .data_range(symbol.address(), symbol.size().max(1))
        .ok()
        .flatten()
        .ok_or_else(no_symbol)?;
    let entry_file_offset = section_file_start + (symbol.address() - section.address());
    let (offset, why_not) = choose(code, symbol.address());
    let instruction = decode_at(code, symbol.address(), offset);
    Ok((
        ProbePoint {
            file_offset: entry_file_offset + offset,
            offset_in_function: offset,
            emulated: kernel_emulates(&code[offset as usize..]),
            instruction,
        },
        why_not,
    ))
}

/// The offset (from the function's start) to probe in `code`, the bytes of a function
/// loaded at `ip`, and why it is 0 when it is 0 and the entry is not itself emulated.
pub fn choose(code: &[u8], ip: u64) -> (u64, Option<String>) {
    let instructions: Vec<Instruction> = Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
        .into_iter()
        .collect();
    let mut info = InstructionInfoFactory::new();
    let mut candidate = None;
    let mut why = "no emulated instruction in the prologue".to_owned();
    for ins in instructions.iter().take(MAX_PROLOGUE) {
        if ins.is_invalid() {
            why = format!("undecodable byte at +{:#x}", ins.ip() - ip);
            break;
        }
        let off = ins.ip() - ip;
        if kernel_emulates(&code[off as usize..]) {
            candidate = Some(off);
            break;
        }
        if ins.flow_control() != FlowControl::Next {
            why = format!("{} at +{off:#x} leaves the prologue", mnemonic(ins));
            break;
        }
        let writes_argument = info.info(ins).used_registers().iter().any(|u| {
            matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            ) && ARGUMENT_REGISTERS.contains(&u.register().full_register())
        });
        if writes_argument {
            why = format!("{} at +{off:#x} writes an argument register", mnemonic(ins));
            break;
        }
    }
    let Some(off) = candidate else {
        return (0, Some(why));
    };
    if off == 0 {
        return (0, None);
    }
    let lands_inside = instructions.iter().find(|ins| {
        matches!(
            ins.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
        ) && {
            let target = ins.near_branch_target();
            target > ip && target <= ip + off
        }
    });
    if let Some(ins) = lands_inside {
        let from = ins.ip() - ip;
        return (
            0,
            Some(format!(
                "the branch at +{from:#x} lands inside the prologue"
            )),
        );
    }
    (off, None)
}

/// The mnemonic of the instruction at `offset` of `code` (loaded at `ip`), e.g. `jle`.
fn decode_at(code: &[u8], ip: u64, offset: u64) -> String {
    let at = &code[offset as usize..];
    mnemonic(&Decoder::with_ip(64, at, ip + offset, DecoderOptions::NONE).decode())
}

/// An instruction's mnemonic in lower case (`xor`, `jle`).
fn mnemonic(ins: &Instruction) -> String {
    format!("{:?}", ins.mnemonic()).to_lowercase()
}

/// Whether x86 Linux emulates the instruction starting at `bytes[0]` when a uprobe on it
/// fires, instead of single-stepping it: `jmp rel8/rel32` (eb, e9), `call rel32` (e8),
/// `jcc rel8/rel32` (70–7f, 0f 80–8f), each without prefix (a 0x66 prefix is refused by
/// `branch_setup_xol_ops`, the others are not worth the risk); `push r64` (50–57, 41 50–57:
/// `push_setup_xol_ops`); the one-byte `nop` (90). Everything else is single-stepped.
pub fn kernel_emulates(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        [0xeb | 0xe9 | 0xe8 | 0x70..=0x7f | 0x90 | 0x50..=0x57, ..]
            | [0x0f, 0x80..=0x8f, ..]
            | [0x41, 0x50..=0x57, ..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's libssl.so.3 (3.0.x), `SSL_get_error`: `xor eax,eax; test esi,esi;
    /// jle +0x10; …`.
    const SSL_GET_ERROR: &[u8] = &[
        0x31, 0xc0, 0x85, 0xf6, 0x7e, 0x0a, 0x31, 0xd2, 0x31, 0xf6, 0x31, 0xff, 0xc3, 0x0f, 0x1f,
        0x00, 0x55, 0x53,
    ];

    #[test]
    fn the_first_emulated_instruction_of_a_clean_prologue() {
        assert_eq!(choose(SSL_GET_ERROR, 0x38400), (4, None));
        // SSL_read: sub rsp,0x18; mov rax,fs:[0x28]; mov [rsp+8],rax; xor eax,eax;
        // test edx,edx; js …
        let ssl_read = [
            0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48,
            0x89, 0x44, 0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f,
        ];
        assert_eq!(choose(&ssl_read, 0x35430), (0x16, None));
    }

    #[test]
    fn an_emulated_entry_stays_on_the_entry() {
        // push rbp; mov rbp,rsp
        assert_eq!(choose(&[0x55, 0x48, 0x89, 0xe5], 0x1000), (0, None));
        // endbr64 is single-stepped, push r12 after it is emulated
        let cet = [0xf3, 0x0f, 0x1e, 0xfa, 0x41, 0x54];
        assert_eq!(choose(&cet, 0x1000), (4, None));
    }

    #[test]
    fn a_written_argument_register_keeps_the_entry() {
        // mov rdi,[rdi+8]; jmp … : rdi no longer holds the first argument at the jmp
        let (off, why) = choose(&[0x48, 0x8b, 0x7f, 0x08, 0xeb, 0x00], 0x1000);
        assert_eq!(off, 0);
        assert!(why.unwrap().contains("writes an argument register"));
        // mov edx,1 writes rdx in a narrower width
        let (off, _) = choose(&[0xba, 0x01, 0x00, 0x00, 0x00, 0xeb, 0x00], 0x1000);
        assert_eq!(off, 0);
    }

    #[test]
    fn a_branch_into_the_prologue_keeps_the_entry() {
        // 0: xor eax,eax; 2: jne +2 (→ 6); 4: jmp -4 (→ 2, inside the prologue)
        let code = [0x31, 0xc0, 0x75, 0x02, 0xeb, 0xfc, 0xc3];
        let (off, why) = choose(&code, 0x1000);
        assert_eq!(off, 0);
        assert!(why.unwrap().contains("lands inside the prologue"));
    }

    #[test]
    fn a_return_before_any_emulated_instruction_keeps_the_entry() {
        // xor eax,eax; ret
        let (off, why) = choose(&[0x31, 0xc0, 0xc3], 0x1000);
        assert_eq!(off, 0);
        assert!(why.unwrap().contains("leaves the prologue"));
    }

    #[test]
    fn what_the_kernel_emulates() {
        for yes in [
            &[0xeb, 0x00][..],
            &[0xe9, 0, 0, 0, 0],
            &[0xe8, 0, 0, 0, 0],
            &[0x7e, 0x0a],
            &[0x0f, 0x84, 0, 0, 0, 0],
            &[0x55],
            &[0x41, 0x57],
            &[0x90],
        ] {
            assert!(kernel_emulates(yes), "{yes:x?}");
        }
        for no in [
            &[0x31, 0xc0][..],
            &[0x48, 0x83, 0xec, 0x18],
            &[0x66, 0xe8, 0, 0],
            &[0xf3, 0x0f, 0x1e, 0xfa],
            &[0xc3],
            &[],
        ] {
            assert!(!kernel_emulates(no), "{no:x?}");
        }
    }

    #[test]
    fn this_hosts_libssl_when_there_is_one() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() {
            eprintln!("skipped: no {}", lib.display());
            return;
        }
        for f in ["SSL_read", "SSL_write", "SSL_get_error", "SSL_accept"] {
            let (p, why) = probe_point(lib, f).expect("probe point");
            eprintln!(
                "{} at file offset {:#x}",
                p.describe(f, why.as_deref()),
                p.file_offset
            );
            // Debian 12's build (OpenSSL 3.0) has an emulated instruction in each prologue:
            // a regression here makes every TLS call on the host 35 times dearer.
            assert!(p.emulated, "{f}: {why:?}");
            assert!(why.is_none());
        }
    }
}
