//! The position-independent blobs that run inside other processes, as
//! `build.rs` linked them, and the loader that places them at an address.
//!
//! A blob is an ELF with one loadable segment starting at virtual address 0
//! and only `R_X86_64_RELATIVE` relocations (`build.rs` checks both), so
//! loading it at `base` means: copy the flat image, add `base` to each
//! relocated word, jump to `base + symbol`.

use std::collections::HashMap;
use std::sync::OnceLock;

use goblin::elf::program_header::PT_LOAD;
use goblin::elf::reloc::R_X86_64_RELATIVE;
use goblin::elf::Elf;

const PAGE_SIZE: usize = 4096;

static PARASITE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/parasite.elf"));
static RESTORER_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/restorer.elf"));

/// Why a blob ELF cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// goblin could not parse the ELF.
    #[error("blob {name}: bad ELF: {source}")]
    Parse {
        /// Which blob.
        name: &'static str,
        /// The parser's complaint.
        source: goblin::error::Error,
    },
    /// The ELF does not have the shape `build.rs` produces.
    #[error("blob {name}: {what}")]
    Shape {
        /// Which blob.
        name: &'static str,
        /// What is wrong.
        what: String,
    },
}

/// A parsed blob, ready to be relocated to any page-aligned address.
#[derive(Debug)]
pub struct Blob {
    name: &'static str,
    /// The loadable segment as it sits in memory at base 0, bss zeroed and
    /// padded to a whole number of pages.
    image: Vec<u8>,
    symbols: HashMap<String, u64>,
    /// Offsets of 8-byte words that hold `base + addend` once loaded.
    relocations: Vec<(u64, u64)>,
}

impl Blob {
    /// Parses a blob ELF as `build.rs` produces it.
    pub fn parse(name: &'static str, elf_bytes: &[u8]) -> Result<Blob, BlobError> {
        let shape = |what: String| BlobError::Shape { name, what };
        let elf = Elf::parse(elf_bytes).map_err(|source| BlobError::Parse { name, source })?;
        let mut loads = elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD);
        let load = loads
            .next()
            .ok_or_else(|| shape("no loadable segment".into()))?;
        if loads.next().is_some() {
            return Err(shape("more than one loadable segment".into()));
        }
        let file_range = load.file_range();
        let bytes = elf_bytes
            .get(file_range.clone())
            .ok_or_else(|| shape(format!("segment {file_range:?} lies outside the file")))?;
        let mem_end = (load.p_vaddr + load.p_memsz) as usize;
        let mut image = vec![0u8; mem_end.div_ceil(PAGE_SIZE) * PAGE_SIZE];
        let start = load.p_vaddr as usize;
        image[start..start + bytes.len()].copy_from_slice(bytes);

        let symbols = elf
            .syms
            .iter()
            .filter(|s| s.st_value != 0)
            .filter_map(|s| Some((elf.strtab.get_at(s.st_name)?.to_owned(), s.st_value)))
            .collect();
        let relocations = elf
            .dynrelas
            .iter()
            .map(|r| {
                let addend = r.r_addend.unwrap_or(0) as u64;
                let fits = (r.r_offset as usize)
                    .checked_add(8)
                    .is_some_and(|e| e <= image.len());
                match (r.r_type, fits) {
                    (R_X86_64_RELATIVE, true) => Ok((r.r_offset, addend)),
                    (R_X86_64_RELATIVE, false) => Err(shape(format!(
                        "relocation at {:#x} is outside the image",
                        r.r_offset
                    ))),
                    (other, _) => Err(shape(format!(
                        "relocation type {other} at {:#x} is not R_X86_64_RELATIVE",
                        r.r_offset
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Blob {
            name,
            image,
            symbols,
            relocations,
        })
    }

    /// The blob's name ("parasite", "restorer").
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Bytes the blob occupies once mapped (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.image.len()
    }

    /// Always false: a blob has at least its ELF header.
    pub fn is_empty(&self) -> bool {
        self.image.is_empty()
    }

    /// Offset of `name` from the load base, if the blob defines it.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).copied()
    }

    /// The image as it must appear in memory when loaded at `base`.
    pub fn relocated(&self, base: u64) -> Vec<u8> {
        let mut image = self.image.clone();
        self.apply_relocations(base, &mut image);
        image
    }

    /// Writes the image for load address `base` into `dst`, which must be
    /// exactly [`Blob::len`] bytes (e.g. a window of a shared mapping).
    ///
    /// # Panics
    /// If `dst.len() != self.len()`.
    pub fn write_relocated(&self, base: u64, dst: &mut [u8]) {
        dst.copy_from_slice(&self.image);
        self.apply_relocations(base, dst);
    }

    fn apply_relocations(&self, base: u64, image: &mut [u8]) {
        for &(offset, addend) in &self.relocations {
            let at = offset as usize;
            image[at..at + 8].copy_from_slice(&base.wrapping_add(addend).to_le_bytes());
        }
    }
}

/// The dump-time parasite (entry `rcr_parasite_main`).
pub fn parasite() -> &'static Blob {
    static BLOB: OnceLock<Blob> = OnceLock::new();
    BLOB.get_or_init(|| Blob::parse("parasite", PARASITE_ELF).expect("build.rs checked the blob"))
}

/// The restore-time restorer (entry `rcr_restorer_main`).
pub fn restorer() -> &'static Blob {
    static BLOB: OnceLock<Blob> = OnceLock::new();
    BLOB.get_or_init(|| Blob::parse("restorer", RESTORER_ELF).expect("build.rs checked the blob"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_blobs_parse_and_have_their_entries() {
        let p = parasite();
        assert!(p.len() >= PAGE_SIZE);
        assert_eq!(p.len() % PAGE_SIZE, 0);
        let entry = p.symbol("rcr_parasite_main").expect("parasite entry");
        assert!((entry as usize) < p.len());
        let r = restorer();
        assert!(r.symbol("rcr_restorer_main").is_some());
        assert!(p.symbol("no_such_symbol").is_none());
    }

    #[test]
    fn relocation_adds_the_base() {
        let mut blob = Blob::parse("parasite", PARASITE_ELF).unwrap();
        // A synthetic RELATIVE relocation makes the test independent of
        // whether the compiler happened to emit one.
        blob.relocations.push((64, 0x123));
        let base = 0x7f00_0000_0000;
        let image = blob.relocated(base);
        assert_eq!(image.len(), blob.len());
        assert_eq!(
            u64::from_le_bytes(image[64..72].try_into().unwrap()),
            base + 0x123
        );
        for &(off, addend) in &blob.relocations {
            let at = off as usize;
            let word = u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
            assert_eq!(word, base + addend);
        }
        // Bytes outside relocations are untouched.
        assert_eq!(image[..4], blob.image[..4]);
    }

    #[test]
    fn write_relocated_matches_relocated() {
        let blob = parasite();
        let mut dst = vec![0xaa; blob.len()];
        blob.write_relocated(0x1000_0000, &mut dst);
        assert_eq!(dst, blob.relocated(0x1000_0000));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Blob::parse("junk", b"not an elf at all").is_err());
    }
}
