//! Builds the two blobs that run inside other processes (the dump-time
//! parasite and the restore-time restorer) from the `rcr-parasite` crate and
//! leaves them in `OUT_DIR` as `parasite.elf` and `restorer.elf`, which
//! `src/blob.rs` embeds.
//!
//! Only the stable host toolchain is available, so there is no bare-metal
//! target: the crate is compiled as a position-independent `staticlib` for the
//! host and linked by `ld -pie` with a linker script that puts everything into
//! one RWX segment, with no interpreter and no libc. The result must carry
//! only `R_X86_64_RELATIVE` relocations and no undefined symbols or TLS, which
//! this script checks so that a bad blob never reaches the loader.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One blob to build: the cfg value selecting its module and its entry symbol.
struct BlobSpec {
    name: &'static str,
    entry: &'static str,
}

const BLOBS: [BlobSpec; 2] = [
    BlobSpec {
        name: "parasite",
        entry: "rcr_parasite_main",
    },
    BlobSpec {
        name: "restorer",
        entry: "rcr_restorer_main",
    },
];

/// Everything in one output section and one PT_LOAD that starts at the ELF
/// header, so the flat image is simply the file's first `p_filesz` bytes.
/// The dynamic sections ride along (they hold the relocations the loader
/// reads); unwind tables and notes are dropped.
const LINKER_SCRIPT: &str = "\
PHDRS { blob PT_LOAD FILEHDR PHDRS FLAGS(7); dyn PT_DYNAMIC; }
SECTIONS {
  . = SIZEOF_HEADERS;
  .blob : {
    *(.text .text.*)
    *(.rodata .rodata.*)
    *(.data.rel.ro .data.rel.ro.*)
    *(.got .got.plt)
    *(.data .data.*)
    *(.bss .bss.* COMMON)
  } :blob
  .dynamic : { *(.dynamic) } :blob :dyn
  .rela.dyn : { *(.rela.*) } :blob
  .dynsym : { *(.dynsym) } :blob
  .dynstr : { *(.dynstr) } :blob
  .hash : { *(.hash) } :blob
  .gnu.hash : { *(.gnu.hash) } :blob
  /DISCARD/ : { *(.eh_frame*) *(.note*) *(.comment) *(.interp) *(.tdata*) *(.tbss*) }
}
";

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let parasite_dir = parasite_crate_dir();
    println!(
        "cargo:rerun-if-changed={}",
        parasite_dir.join("src").display()
    );
    println!("cargo:rerun-if-env-changed=RCR_PARASITE_DIR");
    println!("cargo:rerun-if-env-changed=RCR_LD");

    let script = out_dir.join("blob.ld");
    fs::write(&script, LINKER_SCRIPT).expect("write linker script");
    for spec in &BLOBS {
        let archive = compile_staticlib(spec, &parasite_dir, &out_dir);
        let elf = out_dir.join(format!("{}.elf", spec.name));
        link(spec, &archive, &script, &elf);
        let bytes = fs::read(&elf).expect("read linked blob");
        if let Err(why) = check_blob(&bytes, spec.entry) {
            panic!(
                "blob {} ({}) is not injectable: {why}",
                spec.name,
                elf.display()
            );
        }
    }
}

/// The parasite crate sits next to the engine. When another crate (a
/// scratch crate during development) uses this file as its build script by
/// absolute path, `file!()` is absolute and locates the engine; otherwise
/// the engine is the package being built. `RCR_PARASITE_DIR` overrides both.
fn parasite_crate_dir() -> PathBuf {
    if let Some(dir) = env::var_os("RCR_PARASITE_DIR") {
        return PathBuf::from(dir);
    }
    let this_file = Path::new(file!());
    let engine_dir = if this_file.is_absolute() {
        this_file
            .parent()
            .expect("build.rs has a parent directory")
            .to_path_buf()
    } else {
        // Cargo names it relative to the workspace root; it sits in the
        // package root.
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
    };
    engine_dir.join("..").join("parasite")
}

fn compile_staticlib(spec: &BlobSpec, parasite_dir: &Path, out_dir: &Path) -> PathBuf {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let archive = out_dir.join(format!("librcr_blob_{}.a", spec.name));
    let output = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "staticlib"])
        .args(["--crate-name", &format!("rcr_blob_{}", spec.name)])
        .args(["-C", "relocation-model=pie", "-C", "panic=abort"])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "debuginfo=0",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "lto=fat", "-C", "overflow-checks=off"])
        .args([
            "--cfg",
            "rcr_blob",
            "--cfg",
            &format!("rcr_blob=\"{}\"", spec.name),
        ])
        .arg("-o")
        .arg(&archive)
        .arg(parasite_dir.join("src").join("lib.rs"))
        .output()
        .expect("run rustc for the blob");
    if !output.status.success() {
        panic!(
            "compiling the {} blob failed:\n{}",
            spec.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    archive
}

fn link(spec: &BlobSpec, archive: &Path, script: &Path, elf: &Path) {
    let ld = env::var_os("RCR_LD").unwrap_or_else(|| "ld".into());
    let output = Command::new(&ld)
        .args([
            "-pie",
            "--no-dynamic-linker",
            "-z",
            "norelro",
            "-z",
            "noexecstack",
        ])
        .args([
            "-z",
            "max-page-size=4096",
            "--gc-sections",
            "--build-id=none",
            "--strip-debug",
        ])
        .args(["--no-warn-rwx-segments", "--no-undefined"])
        .args(["-e", spec.entry, "-u", spec.entry])
        .arg("-T")
        .arg(script)
        .arg("-o")
        .arg(elf)
        .arg(archive)
        .output()
        .unwrap_or_else(|e| panic!("run {ld:?} to link the {} blob: {e}", spec.name));
    if !output.status.success() {
        panic!(
            "linking the {} blob failed:\n{}",
            spec.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_TLS: u32 = 7;
const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_REL: u32 = 9;
const SHT_DYNSYM: u32 = 11;
const R_X86_64_RELATIVE: u32 = 8;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// A section header's fields this check reads.
struct Section {
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
    entsize: usize,
}

fn cstr_at(b: &[u8], off: usize) -> &str {
    let end = b[off..]
        .iter()
        .position(|&c| c == 0)
        .map_or(b.len(), |n| off + n);
    std::str::from_utf8(&b[off..end]).unwrap_or("<non-utf8>")
}

/// Checks the linked ELF64: one PT_LOAD, no interpreter or TLS, only
/// relative relocations, no undefined symbols, and the entry symbol present.
fn check_blob(b: &[u8], entry: &str) -> Result<(), String> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err("not a little-endian ELF64 file".into());
    }
    let (phoff, phentsize, phnum) = (
        u64_at(b, 32) as usize,
        u16_at(b, 54) as usize,
        u16_at(b, 56) as usize,
    );
    let mut loads = 0;
    for i in 0..phnum {
        match u32_at(b, phoff + i * phentsize) {
            PT_LOAD => loads += 1,
            PT_INTERP => return Err("has an interpreter".into()),
            PT_TLS => return Err("uses thread-local storage".into()),
            _ => {}
        }
    }
    if loads != 1 {
        return Err(format!("has {loads} loadable segments, want exactly 1"));
    }
    let (shoff, shentsize, shnum) = (
        u64_at(b, 40) as usize,
        u16_at(b, 58) as usize,
        u16_at(b, 60) as usize,
    );
    let sections: Vec<Section> = (0..shnum)
        .map(|i| {
            let h = shoff + i * shentsize;
            Section {
                kind: u32_at(b, h + 4),
                offset: u64_at(b, h + 24) as usize,
                size: u64_at(b, h + 32) as usize,
                link: u32_at(b, h + 40),
                entsize: u64_at(b, h + 56) as usize,
            }
        })
        .collect();
    let mut entry_found = false;
    for s in &sections {
        match s.kind {
            SHT_REL => return Err("has REL (not RELA) relocations".into()),
            SHT_RELA => {
                for r in (s.offset..s.offset + s.size).step_by(24) {
                    let kind = u64_at(b, r + 8) as u32;
                    if kind != R_X86_64_RELATIVE {
                        let at = u64_at(b, r);
                        return Err(format!("relocation type {kind} at {at:#x} is not RELATIVE"));
                    }
                }
            }
            SHT_SYMTAB | SHT_DYNSYM => {
                let strtab = &sections[s.link as usize];
                for sym in (s.offset..s.offset + s.size)
                    .step_by(s.entsize.max(24))
                    .skip(1)
                {
                    let name = cstr_at(b, strtab.offset + u32_at(b, sym) as usize);
                    if u16_at(b, sym + 6) == 0 && !name.is_empty() {
                        return Err(format!("symbol {name} is undefined"));
                    }
                    entry_found |= s.kind == SHT_SYMTAB && name == entry;
                }
            }
            _ => {}
        }
    }
    if !entry_found {
        return Err(format!("entry symbol {entry} is missing"));
    }
    Ok(())
}
