//! Little-endian reads and writes at byte offsets, for the kernel layouts this
//! crate fills without reinterpreting memory.

/// Reads `N` bytes at `off`, or `None` past the end.
pub(crate) fn get<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    buf.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Reads a u16 at `off`.
pub(crate) fn get_u16(buf: &[u8], off: usize) -> Option<u16> {
    get(buf, off).map(u16::from_le_bytes)
}

/// Reads a u32 at `off`.
pub(crate) fn get_u32(buf: &[u8], off: usize) -> Option<u32> {
    get(buf, off).map(u32::from_le_bytes)
}

/// Reads a u64 at `off`.
pub(crate) fn get_u64(buf: &[u8], off: usize) -> Option<u64> {
    get(buf, off).map(u64::from_le_bytes)
}

/// Writes `value` at `off`; callers size `buf` for their layout first, so an
/// out-of-range write is a bug in this crate and panics.
pub(crate) fn put(buf: &mut [u8], off: usize, value: &[u8]) {
    buf[off..off + value.len()].copy_from_slice(value);
}

/// Writes a u16 at `off`.
pub(crate) fn put_u16(buf: &mut [u8], off: usize, value: u16) {
    put(buf, off, &value.to_le_bytes());
}

/// Writes a u32 at `off`.
pub(crate) fn put_u32(buf: &mut [u8], off: usize, value: u32) {
    put(buf, off, &value.to_le_bytes());
}

/// Writes a u64 at `off`.
pub(crate) fn put_u64(buf: &mut [u8], off: usize, value: u64) {
    put(buf, off, &value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut buf = [0u8; 16];
        put_u64(&mut buf, 8, 0x0102_0304_0506_0708);
        put_u32(&mut buf, 0, 0xdead_beef);
        put_u16(&mut buf, 4, 0x1234);
        assert_eq!(buf[8], 0x08);
        assert_eq!(get_u64(&buf, 8), Some(0x0102_0304_0506_0708));
        assert_eq!(get_u32(&buf, 0), Some(0xdead_beef));
        assert_eq!(get_u16(&buf, 4), Some(0x1234));
        assert_eq!(get_u64(&buf, 9), None);
        assert_eq!(get_u32(&buf, usize::MAX), None);
    }
}
