//! Runs CPUID after its restore and expects the answers of the x86-64-v2
//! profile: AVX, AVX2 and AVX-512 hidden, SSE4.2 as before the checkpoint.

use rcr_tests::workload::{self, Args, Verdict};
use std::arch::x86_64::__cpuid_count;

/// CPUID.1:ECX bits.
const SSE4_2: u32 = 1 << 20;
const AVX: u32 = 1 << 28;
/// CPUID.7.0:EBX bits.
const AVX2: u32 = 1 << 5;
const AVX512F: u32 = 1 << 16;

fn main() {
    let args = Args::init();
    let before = __cpuid_count(1, 0).ecx;
    args.signal_ready();
    workload::wait_for_wake();

    let mut v = Verdict::new();
    let l1 = __cpuid_count(1, 0);
    let l7 = __cpuid_count(7, 0);
    v.eq("leaf 1 ECX avx bit", l1.ecx & AVX, 0);
    v.eq("leaf 7 EBX avx2 bit", l7.ebx & AVX2, 0);
    v.eq("leaf 7 EBX avx512f bit", l7.ebx & AVX512F, 0);
    v.eq("leaf 1 ECX sse4_2 bit", l1.ecx & SSE4_2, before & SSE4_2);
    args.finish(v)
}
