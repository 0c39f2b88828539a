//! `rcr show`: a checkpoint as JSON, with "where was it" for each thread: the
//! instruction at its `rip` and the symbol of the mapped ELF it lies in.

use crate::error::Result;
use crate::objects::files;
use crate::objects::memory::PAGE_SIZE;
use crate::restore::load;
use goblin::elf::Elf;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use rcr_images::pb::{self, VmaKind};
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Describes the checkpoint in `dir` as JSON.
pub fn show(dir: &Path) -> Result<Value> {
    let c = load::load(dir)?;
    let processes: Vec<Value> = c
        .processes
        .iter()
        .map(|p| match &p.images {
            None => json!({"pid": p.entry.pid, "zombie": true, "exit_code": p.entry.exit_code}),
            Some(images) => {
                let threads: Vec<Value> = images
                    .core
                    .threads
                    .iter()
                    .map(|t| {
                        let rip = t.regs.as_ref().map_or(0, |r| r.rip);
                        json!({"tid": t.tid, "rip": format!("{rip:#x}"),
                               "where": where_was(images, &c.files, rip)})
                    })
                    .collect();
                json!({
                    "pid": p.entry.pid,
                    "threads": threads,
                    "core": value(&images.core),
                    "mm": value(&images.mm),
                    "pagemap": value(&images.pagemap),
                    "fs": value(&images.fs),
                })
            }
        })
        .collect();
    let tree: Vec<Value> = c.processes.iter().map(|p| value(&p.entry)).collect();
    Ok(json!({
        "dir": dir.display().to_string(),
        "inventory": value(&c.inventory),
        "pstree": tree,
        "processes": processes,
        "files": value(&c.files),
    }))
}

fn value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The instruction bytes at `rip` (saved page if dumped, else the mapped
/// file), decoded, and the ELF symbol around it.
fn where_was(c: &load::ProcessImages, files: &pb::FileTable, rip: u64) -> Value {
    let Some(vma) = c.mm.vmas.iter().find(|v| v.start <= rip && rip < v.end) else {
        return json!({"error": "rip is outside every saved VMA"});
    };
    let file = matches!(vma.kind(), VmaKind::FilePrivate | VmaKind::FileShared)
        .then(|| files::reg_by_id(files, vma.file_id))
        .flatten();
    let bytes = code_bytes(c, vma, file, rip);
    let insn = bytes.as_deref().map(|b| decode(b, rip));
    let (symbol, offset) = file
        .and_then(|f| symbol_at(&f.path, rip - vma.start + vma.pgoff))
        .map_or((None, None), |(s, o)| (Some(s), Some(o)));
    json!({
        "mapping": vma.name,
        "instruction": insn,
        "symbol": symbol,
        "symbol_offset": offset,
    })
}

fn code_bytes(
    c: &load::ProcessImages,
    vma: &pb::Vma,
    file: Option<&pb::RegFile>,
    rip: u64,
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 16.min((vma.end - rip) as usize)];
    let saved = c
        .pagemap
        .runs
        .iter()
        .find(|r| !r.inherited && r.vaddr <= rip && rip < r.vaddr + r.nr_pages * PAGE_SIZE);
    match (saved, file) {
        (Some(r), _) => {
            let pages = std::fs::File::open(&c.pages_path).ok()?;
            let n = buf
                .len()
                .min((r.vaddr + r.nr_pages * PAGE_SIZE - rip) as usize);
            pages
                .read_exact_at(&mut buf[..n], r.offset + rip - r.vaddr)
                .ok()?;
            buf.truncate(n);
        }
        (None, Some(f)) => {
            let n = std::fs::File::open(&f.path)
                .ok()?
                .read_at(&mut buf, rip - vma.start + vma.pgoff)
                .ok()?;
            buf.truncate(n);
        }
        (None, None) => return None,
    }
    Some(buf)
}

fn decode(bytes: &[u8], rip: u64) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return "(not a valid instruction)".into();
    }
    let mut text = String::new();
    IntelFormatter::new().format(&insn, &mut text);
    text
}

/// The symbol covering file offset `off` of the ELF at `path`.
fn symbol_at(path: &str, off: u64) -> Option<(String, u64)> {
    let data = std::fs::read(path).ok()?;
    let elf = Elf::parse(&data).ok()?;
    let ph = elf.program_headers.iter().find(|p| {
        p.p_type == goblin::elf::program_header::PT_LOAD
            && p.p_offset <= off
            && off < p.p_offset + p.p_filesz
    })?;
    let vaddr = ph.p_vaddr + off - ph.p_offset;
    let lookup = |syms: &goblin::elf::Symtab, strtab: &goblin::strtab::Strtab| {
        syms.iter()
            .filter(|s| {
                s.is_function() && s.st_value <= vaddr && vaddr < s.st_value + s.st_size.max(1)
            })
            .find_map(|s| {
                strtab
                    .get_at(s.st_name)
                    .map(|n| (n.to_string(), vaddr - s.st_value))
            })
    };
    lookup(&elf.syms, &elf.strtab).or_else(|| lookup(&elf.dynsyms, &elf.dynstrtab))
}
