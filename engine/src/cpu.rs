//! The CPU a checkpoint ran on: recorded at dump, compared at restore.

use crate::error::{Error, Result};
use rcr_arch::cpuid::{CpuSnapshot, CpuidResult};
use rcr_arch::features;
use rcr_images::pb;

/// This host's CPU as the inventory stores it.
pub fn host_info() -> pb::CpuInfo {
    to_info(&CpuSnapshot::host())
}

fn to_info(s: &CpuSnapshot) -> pb::CpuInfo {
    pb::CpuInfo {
        vendor: s.vendor.clone(),
        family: s.family,
        model: s.model,
        stepping: s.stepping,
        leaves: s
            .leaves
            .iter()
            .map(|&(leaf, subleaf, r)| pb::CpuidLeaf {
                leaf,
                subleaf,
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
            })
            .collect(),
        xcr0: s.xcr0,
        xsave_size: s.xsave_size,
    }
}

fn from_info(i: &pb::CpuInfo) -> CpuSnapshot {
    CpuSnapshot {
        vendor: i.vendor.clone(),
        family: i.family,
        model: i.model,
        stepping: i.stepping,
        leaves: i
            .leaves
            .iter()
            .map(|l| {
                let r = CpuidResult {
                    eax: l.eax,
                    ebx: l.ebx,
                    ecx: l.ecx,
                    edx: l.edx,
                };
                (l.leaf, l.subleaf, r)
            })
            .collect(),
        xcr0: i.xcr0,
        xsave_size: i.xsave_size,
    }
}

/// Refuses to restore where the CPU lacks a feature the program may have
/// seen and used, naming each one.
pub fn check_restore(inv: &pb::Inventory) -> Result<()> {
    let Some(saved) = &inv.cpu else {
        return Err(Error::Preflight(
            "the checkpoint does not record its CPU".into(),
        ));
    };
    let missing = features::missing_on(&from_info(saved), &CpuSnapshot::host());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Preflight(format!(
            "this CPU lacks features the checkpointed program may use: {}",
            missing.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_round_trips_and_passes() {
        let info = host_info();
        let inv = pb::Inventory {
            cpu: Some(info.clone()),
            ..Default::default()
        };
        assert_eq!(to_info(&from_info(&info)), info);
        check_restore(&inv).unwrap();
    }

    #[test]
    fn a_richer_cpu_is_refused_by_name() {
        let mut info = host_info();
        for l in info
            .leaves
            .iter_mut()
            .filter(|l| l.leaf == 7 && l.subleaf == 0)
        {
            l.ebx |= 1 << 16; // avx512f
        }
        let host_has = features::present(&CpuSnapshot::host()).contains(&"avx512f");
        let inv = pb::Inventory {
            cpu: Some(info),
            ..Default::default()
        };
        let result = check_restore(&inv);
        if host_has {
            result.unwrap();
        } else {
            let msg = result.unwrap_err().to_string();
            assert!(msg.contains("avx512f"), "{msg}");
        }
    }
}
