//! Runs CPUID and expects the answers of the x86-64-v2 profile: AVX, AVX2
//! and AVX-512 hidden, SSE4.2 as at the start. Without parameters it checks
//! after its restore only (it was started unmasked); with `exec` it first
//! execs itself with `masked`, which checks at the start too, so the
//! profile is seen to hold across an execve and then across a restore.

use rcr_tests::workload::{self, Args, Verdict};
use std::arch::x86_64::__cpuid_count;
use std::os::unix::process::CommandExt;

/// CPUID.1:ECX bits.
const SSE4_2: u32 = 1 << 20;
const AVX: u32 = 1 << 28;
/// CPUID.7.0:EBX bits.
const AVX2: u32 = 1 << 5;
const AVX512F: u32 = 1 << 16;

fn check_masked(v: &mut Verdict, sse4_2: u32) {
    let l1 = __cpuid_count(1, 0);
    let l7 = __cpuid_count(7, 0);
    v.eq("leaf 1 ECX avx bit", l1.ecx & AVX, 0);
    v.eq("leaf 7 EBX avx2 bit", l7.ebx & AVX2, 0);
    v.eq("leaf 7 EBX avx512f bit", l7.ebx & AVX512F, 0);
    v.eq("leaf 1 ECX sse4_2 bit", l1.ecx & SSE4_2, sse4_2);
}

fn main() {
    let args = Args::init();
    let sse4_2 = __cpuid_count(1, 0).ecx & SSE4_2;
    match args.params.first().map(String::as_str) {
        Some("exec") => {
            let e = std::process::Command::new("/proc/self/exe")
                .arg(&args.ready)
                .arg(&args.result)
                .arg("masked")
                .exec();
            args.fail_early(&format!("execve of itself: {e}"))
        }
        Some("masked") => {
            let mut v = Verdict::new();
            check_masked(&mut v, sse4_2);
            if !v.is_ok() {
                args.fail_early(&format!("after execve: {:?}", v.into_diffs()))
            }
        }
        _ => {}
    }
    args.signal_ready();
    workload::wait_for_wake();
    let mut v = Verdict::new();
    check_masked(&mut v, sse4_2);
    args.finish(v)
}
