//! `/proc/PID/auxv`: the ELF auxiliary vector the kernel gave the program, as native
//! `(type, value)` u64 pairs ending with `AT_NULL`.

use super::read::Target;
use super::ProcError;

/// Parses the auxiliary vector up to and including the `AT_NULL` pair; a trailing
/// partial pair is ignored.
pub fn parse_auxv(bytes: &[u8]) -> Vec<(u64, u64)> {
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8-byte chunk"));
    let mut out = Vec::new();
    for pair in bytes.chunks_exact(16) {
        let entry = (word(&pair[..8]), word(&pair[8..]));
        out.push(entry);
        if entry.0 == libc::AT_NULL {
            break;
        }
    }
    out
}

/// Reads and parses `/proc/PID/auxv`.
pub fn read_auxv(pid: i32) -> Result<Vec<(u64, u64)>, ProcError> {
    Ok(parse_auxv(&Target::process(pid).read_bytes("auxv", 512)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn stops_after_at_null() {
        // Head of a real auxv: AT_SYSINFO_EHDR, AT_MINSIGSTKSZ, AT_HWCAP, AT_PAGESZ.
        let raw = bytes(&[
            0x21,
            0x7f5e104a4000,
            0x33,
            0xd30,
            0x10,
            0x178bfbff,
            6,
            4096,
            0,
            0,
            99,
            99,
        ]);
        assert_eq!(
            parse_auxv(&raw),
            vec![
                (0x21, 0x7f5e104a4000),
                (0x33, 0xd30),
                (0x10, 0x178bfbff),
                (6, 4096),
                (0, 0)
            ]
        );
    }

    #[test]
    fn ignores_partial_tail() {
        let mut raw = bytes(&[6, 4096]);
        raw.extend_from_slice(&[1, 2, 3]);
        assert_eq!(parse_auxv(&raw), vec![(6, 4096)]);
    }

    #[test]
    fn reads_own_auxv() {
        let auxv = read_auxv(std::process::id() as i32).unwrap();
        assert_eq!(auxv.last(), Some(&(libc::AT_NULL, 0)));
        let pagesz = auxv.iter().find(|(k, _)| *k == libc::AT_PAGESZ).unwrap().1;
        assert_eq!(pagesz, 4096);
        // SAFETY: getauxval only reads the process's own auxiliary vector.
        let ehdr = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        assert!(auxv.contains(&(libc::AT_SYSINFO_EHDR, ehdr)));
    }
}
