//! The restorer's hole: where it goes and what it holds. Pure layout logic.
//!
//! ```text
//! hole_start: restorer blob (relocated) | RestoreArgs | VMAs | page runs |
//!             pending signals | ThreadArgs | POSIX timers | rt_sigframe per thread |
//!             leader stack | one stack per other thread | vDSO parking | hole_end
//! ```

use rcr_parasite::restore_abi::{
    PageRunEntry, PendingSignal, PosixTimerEntry, RestoreArgs, ThreadArgs, VmaEntry,
};
use std::mem::{offset_of, size_of};

const PAGE: u64 = 4096;
/// The leader's stack; it needs little, but a fault here is unreportable.
const STACK_SIZE: u64 = 256 * 1024;
/// Each other thread only restores its own few things.
pub const THREAD_STACK_SIZE: u64 = 64 * 1024;
/// Lowest address considered, clear of the null guard and low fixed mappings.
const SEARCH_FROM: u64 = 0x1000_0000;
/// Room kept free around the hole so no saved mapping grows into it.
const GUARD: u64 = 2 << 20;
/// End of the 47-bit user address space.
const USER_END: u64 = 0x7fff_ffff_f000;

fn page_up(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// What goes into the hole, by count and size.
#[derive(Clone, Copy, Debug, Default)]
pub struct HoleContents {
    pub blob_len: u64,
    pub vmas: usize,
    pub runs: usize,
    /// Pending signals, the process's and every thread's.
    pub pending: usize,
    pub threads: usize,
    pub posix_timers: usize,
    /// Bytes of the largest thread's signal frame.
    pub frame_len: u64,
    pub park_len: u64,
}

/// Offsets of the parts inside the hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoleLayout {
    pub args: u64,
    pub vmas: u64,
    pub runs: u64,
    pub pending: u64,
    pub threads: u64,
    pub posix_timers: u64,
    /// Thread `i`'s frame is at `frames + i * frame_stride`.
    pub frames: u64,
    pub frame_stride: u64,
    /// The leader's stack.
    pub stack_top: u64,
    /// Thread `i >= 1` has its stack at `thread_stacks + (i - 1) * THREAD_STACK_SIZE`.
    pub thread_stacks: u64,
    pub park: u64,
    pub len: u64,
}

impl HoleLayout {
    pub fn frame(&self, thread: usize) -> u64 {
        self.frames + thread as u64 * self.frame_stride
    }

    /// Lowest address (as an offset) of the stack of thread `thread >= 1`.
    pub fn thread_stack(&self, thread: usize) -> u64 {
        self.thread_stacks + (thread as u64 - 1) * THREAD_STACK_SIZE
    }
}

/// Lays out the hole for the given contents.
pub fn hole_layout(c: &HoleContents) -> HoleLayout {
    let args = page_up(c.blob_len);
    let vmas = align_up(args + size_of::<RestoreArgs>() as u64, 64);
    let runs = align_up(vmas + (c.vmas * size_of::<VmaEntry>()) as u64, 64);
    let pending = align_up(runs + (c.runs * size_of::<PageRunEntry>()) as u64, 64);
    let threads = align_up(
        pending + (c.pending * size_of::<PendingSignal>()) as u64,
        64,
    );
    let posix_timers = align_up(threads + (c.threads * size_of::<ThreadArgs>()) as u64, 64);
    let frames = align_up(
        posix_timers + (c.posix_timers * size_of::<PosixTimerEntry>()) as u64,
        64,
    );
    let frame_stride = align_up(c.frame_len, 64);
    let stack_bottom = page_up(frames + c.threads as u64 * frame_stride);
    let stack_top = stack_bottom + STACK_SIZE;
    let thread_stacks = stack_top;
    let park = thread_stacks + c.threads.saturating_sub(1) as u64 * THREAD_STACK_SIZE;
    HoleLayout {
        args,
        vmas,
        runs,
        pending,
        threads,
        posix_timers,
        frames,
        frame_stride,
        stack_top,
        thread_stacks,
        park,
        len: page_up(park + c.park_len),
    }
}

/// Offset of the inherited rseq registration inside the args, which the
/// engine's code in the new task fills in.
pub fn rseq_inherited_offset(layout: &HoleLayout) -> u64 {
    layout.args + offset_of!(RestoreArgs, rseq_inherited) as u64
}

/// Finds the lowest address where `len` bytes fit with a guard on each side,
/// clear of every `(start, end)` range in `taken`.
pub fn find_hole(taken: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut ranges: Vec<(u64, u64)> = taken.to_vec();
    ranges.sort_unstable();
    let mut candidate = SEARCH_FROM;
    for &(start, end) in &ranges {
        if end + GUARD <= candidate {
            continue;
        }
        if candidate + len + GUARD <= start {
            break;
        }
        candidate = candidate.max(page_up(end) + GUARD);
    }
    (candidate + len + GUARD <= USER_END).then_some(candidate)
}

/// Copies `value`'s bytes to `offset` of `image`.
pub fn put<T: Copy>(image: &mut [u8], offset: u64, value: &T) {
    let off = offset as usize;
    let n = size_of::<T>();
    // SAFETY: T is plain old data (repr(C), Copy, no pointers that the engine
    // dereferences); we copy its bytes into a bounds-checked slice.
    let bytes = unsafe { std::slice::from_raw_parts(value as *const T as *const u8, n) };
    image[off..off + n].copy_from_slice(bytes);
}

/// Copies a slice of values to `offset` of `image`.
pub fn put_slice<T: Copy>(image: &mut [u8], offset: u64, values: &[T]) {
    for (i, v) in values.iter().enumerate() {
        put(image, offset + (i * size_of::<T>()) as u64, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_ordered_and_aligned() {
        let l = hole_layout(&HoleContents {
            blob_len: 10_000,
            vmas: 3,
            runs: 5,
            pending: 1,
            threads: 3,
            posix_timers: 2,
            frame_len: 3000,
            park_len: 0x8000,
        });
        assert_eq!(l.args % PAGE, 0);
        assert!(l.args >= 10_000);
        assert!(l.vmas < l.runs && l.runs < l.pending && l.pending < l.threads);
        assert!(l.threads + 3 * size_of::<ThreadArgs>() as u64 <= l.posix_timers);
        assert!(l.posix_timers + 2 * size_of::<PosixTimerEntry>() as u64 <= l.frames);
        assert_eq!(l.frame(1) % 64, 0);
        assert!(l.frame(2) + 3000 <= l.stack_top - STACK_SIZE);
        assert_eq!(l.stack_top % 16, 0);
        assert_eq!(l.thread_stack(1), l.stack_top);
        assert_eq!(l.thread_stack(2) + THREAD_STACK_SIZE, l.park);
        assert!(l.park + 0x8000 <= l.len);
        assert_eq!(l.len % PAGE, 0);
    }

    #[test]
    fn hole_avoids_taken_ranges() {
        let taken = [(0x1000_0000, 0x1100_0000), (0x1200_0000, 0x1300_0000)];
        let at = find_hole(&taken, 0x10_0000).unwrap();
        for (s, e) in taken {
            assert!(at + 0x10_0000 + GUARD <= s || at >= e + GUARD, "{at:#x}");
        }
        assert_eq!(find_hole(&[], 0x1000), Some(SEARCH_FROM));
        assert_eq!(find_hole(&[(0, USER_END)], 0x1000), None);
    }

    #[test]
    fn put_writes_bytes() {
        let mut image = vec![0u8; 16];
        put(&mut image, 4, &0x0102_0304u32);
        assert_eq!(&image[4..8], &0x0102_0304u32.to_ne_bytes());
        put_slice(&mut image, 8, &[7u16, 9u16]);
        assert_eq!(&image[8..12], &[7, 0, 9, 0]);
    }
}
