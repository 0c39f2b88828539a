//! Deterministic pseudo-random data: every word depends on a seed and its
//! index, so a misplaced, stale or zeroed page is detected.

/// Seed of the values wl_registers keeps in its registers (slot k holds
/// `word(REGISTERS_SEED, k)`: ymm0..15 lanes are slots 0..63, then rbx,
/// r12..r15), shared with the test that inspects it from outside.
pub const REGISTERS_SEED: u64 = 0x7e95;

/// The `i`-th 64-bit word of the stream named by `seed` (splitmix64).
pub fn word(seed: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th byte of the stream named by `seed`.
pub fn byte(seed: u64, i: u64) -> u8 {
    word(seed, i / 8).to_le_bytes()[(i % 8) as usize]
}

/// Fills `buf` with the stream `seed`, starting at byte index `first`.
pub fn fill(buf: &mut [u8], seed: u64, first: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = byte(seed, first + k as u64);
    }
}

/// Fills `words` with the stream `seed` from word 0 (fast path for big areas).
pub fn fill_words(words: &mut [u64], seed: u64) {
    for (i, w) in words.iter_mut().enumerate() {
        *w = word(seed, i as u64);
    }
}

/// Where `buf` first differs from the stream `seed` started at byte `first`,
/// and how many bytes differ in total.
pub fn mismatches(buf: &[u8], seed: u64, first: u64) -> Option<(usize, usize)> {
    let mut first_bad = None;
    let mut count = 0;
    for (k, &b) in buf.iter().enumerate() {
        if b != byte(seed, first + k as u64) {
            first_bad.get_or_insert(k);
            count += 1;
        }
    }
    first_bad.map(|at| (at, count))
}

/// Word-wise version of [`mismatches`]: (first bad word index, bad words).
pub fn word_mismatches(words: &[u64], seed: u64) -> Option<(usize, usize)> {
    let mut first_bad = None;
    let mut count = 0;
    for (i, &w) in words.iter().enumerate() {
        if w != word(seed, i as u64) {
            first_bad.get_or_insert(i);
            count += 1;
        }
    }
    first_bad.map(|at| (at, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        assert_eq!(word(1, 5), word(1, 5));
        assert_ne!(word(1, 5), word(2, 5));
        assert_ne!(word(1, 5), word(1, 6));
    }

    #[test]
    fn mismatch_finds_a_flipped_byte() {
        let mut buf = vec![0u8; 100];
        fill(&mut buf, 7, 3);
        assert_eq!(mismatches(&buf, 7, 3), None);
        buf[42] ^= 1;
        assert_eq!(mismatches(&buf, 7, 3), Some((42, 1)));
    }
}
