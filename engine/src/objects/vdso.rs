//! The vDSO block (`[vvar]`, `[vvar_vclock]`, `[vdso]`): recorded at dump as
//! VMAs; at restore the new task's own block is moved to the saved address,
//! which keeps working on the same kernel because the layout is identical.

use crate::error::{Error, Result};
use crate::proc::maps::{MapName, MapsEntry};
use rcr_images::pb::{self, VmaKind};
use rcr_parasite::restore_abi::VdsoPart;

const KINDS: [VmaKind; 3] = [VmaKind::Vvar, VmaKind::VvarVclock, VmaKind::Vdso];

fn kind_of(name: &MapName) -> Option<VmaKind> {
    match name {
        MapName::Vvar => Some(VmaKind::Vvar),
        MapName::VvarVclock => Some(VmaKind::VvarVclock),
        MapName::Vdso => Some(VmaKind::Vdso),
        _ => None,
    }
}

fn kind_name(kind: VmaKind) -> &'static str {
    match kind {
        VmaKind::Vvar => "[vvar]",
        VmaKind::VvarVclock => "[vvar_vclock]",
        _ => "[vdso]",
    }
}

/// Bytes of hole space needed to park the current block.
pub fn park_size(current: &[MapsEntry]) -> u64 {
    let parts: Vec<_> = current
        .iter()
        .filter(|m| kind_of(&m.name).is_some())
        .collect();
    match (parts.first(), parts.last()) {
        (Some(lo), Some(hi)) => hi.end - lo.start,
        _ => 0,
    }
}

/// Plans the moves: each part of the saved block is matched with the same
/// part of the current one, which must have the same size and the same
/// place relative to the others. Parts the image lacks are left to be
/// unmapped with the rest of the old address space.
pub fn plan(saved: &[pb::Vma], current: &[MapsEntry], park_at: u64) -> Result<Vec<VdsoPart>> {
    let now: Vec<(VmaKind, u64, u64)> = current
        .iter()
        .filter_map(|m| kind_of(&m.name).map(|k| (k, m.start, m.end)))
        .collect();
    let now_lo = now.iter().map(|p| p.1).min().unwrap_or(0);
    let saved_parts: Vec<&pb::Vma> = saved.iter().filter(|v| KINDS.contains(&v.kind())).collect();
    let saved_lo = saved_parts.iter().map(|v| v.start).min().unwrap_or(0);
    let mut out = Vec::new();
    for v in saved_parts {
        let kind = v.kind();
        let Some(&(_, start, end)) = now.iter().find(|p| p.0 == kind) else {
            return Err(Error::Preflight(format!(
                "this kernel has no {} but the checkpoint used one",
                kind_name(kind)
            )));
        };
        if end - start != v.end - v.start || start - now_lo != v.start - saved_lo {
            return Err(Error::Preflight(format!(
                "the {} layout of this kernel differs from the checkpoint's \
                 (restore it on the kernel it was taken on)",
                kind_name(kind)
            )));
        }
        out.push(VdsoPart {
            now: start,
            park: park_at + (start - now_lo),
            saved: v.start,
            len: end - start,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: MapName, start: u64, end: u64) -> MapsEntry {
        MapsEntry {
            start,
            end,
            prot: 1,
            shared: false,
            offset: 0,
            dev_major: 0,
            dev_minor: 0,
            inode: 0,
            name,
        }
    }

    fn vma(kind: VmaKind, start: u64, end: u64) -> pb::Vma {
        pb::Vma {
            start,
            end,
            kind: kind as i32,
            ..Default::default()
        }
    }

    fn current() -> Vec<MapsEntry> {
        vec![
            entry(MapName::Vvar, 0x10000, 0x14000),
            entry(MapName::VvarVclock, 0x14000, 0x16000),
            entry(MapName::Vdso, 0x16000, 0x18000),
        ]
    }

    #[test]
    fn plans_moves_keeping_layout() {
        let saved = [
            vma(VmaKind::Vvar, 0x50000, 0x54000),
            vma(VmaKind::VvarVclock, 0x54000, 0x56000),
            vma(VmaKind::Vdso, 0x56000, 0x58000),
        ];
        assert_eq!(park_size(&current()), 0x8000);
        let parts = plan(&saved, &current(), 0x90000).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].now, 0x16000);
        assert_eq!(parts[2].park, 0x96000);
        assert_eq!(parts[2].saved, 0x56000);
    }

    #[test]
    fn refuses_other_layouts() {
        let bigger = [vma(VmaKind::Vdso, 0x56000, 0x59000)];
        assert!(plan(&bigger, &current(), 0x90000).is_err());
        let shifted = [
            vma(VmaKind::Vvar, 0x50000, 0x54000),
            vma(VmaKind::Vdso, 0x58000, 0x5a000),
        ];
        assert!(plan(&shifted, &current(), 0x90000).is_err());
    }
}
