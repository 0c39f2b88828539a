//! The mm's bookkeeping fields (code/data/brk/stack/args/env bounds, auxv,
//! exe link), dump and restore side by side. Restore sets them in one
//! PR_SET_MM_MAP call from the restorer.

use crate::error::{Error, Result};
use crate::proc::stat::Stat;
use rcr_images::pb;
use rcr_parasite::restore_abi::{PrctlMmMap, AUXV_WORDS};

/// Dump side: the fields from /proc/PID/stat, the break the task reported,
/// and its auxv. VMAs and the exe file id are filled in by the caller.
pub fn dump_mm_fields(stat: &Stat, brk: u64, auxv: &[(u64, u64)]) -> pb::Mm {
    pb::Mm {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv: auxv.iter().flat_map(|&(k, v)| [k, v]).collect(),
        ..Default::default()
    }
}

/// Restore side: the prctl_mm_map (auxv pointer filled in by the restorer)
/// and the auxv words.
pub fn restore_mm_fields(
    pid: i32,
    mm: &pb::Mm,
    exe_fd: i32,
) -> Result<(PrctlMmMap, [u64; AUXV_WORDS])> {
    if mm.auxv.len() > AUXV_WORDS {
        return Err(Error::Invalid {
            path: format!("mm-{pid}.img").into(),
            what: format!("auxv has {} words, more than {AUXV_WORDS}", mm.auxv.len()),
        });
    }
    let mut auxv = [0u64; AUXV_WORDS];
    auxv[..mm.auxv.len()].copy_from_slice(&mm.auxv);
    let map = PrctlMmMap {
        start_code: mm.start_code,
        end_code: mm.end_code,
        start_data: mm.start_data,
        end_data: mm.end_data,
        start_brk: mm.start_brk,
        brk: mm.brk,
        start_stack: mm.start_stack,
        arg_start: mm.arg_start,
        arg_end: mm.arg_end,
        env_start: mm.env_start,
        env_end: mm.env_end,
        auxv: 0,
        auxv_size: (mm.auxv.len() * 8) as u32,
        exe_fd: exe_fd as u32,
    };
    Ok((map, auxv))
}
