//! `/proc/PID/smaps`: each VMA's maps line followed by `Key: value kB` lines and a
//! final `VmFlags:` line.
//!
//! A process can have tens of thousands of VMAs, so the reader takes the whole file in
//! one go and the parser walks it once, allocating only the name and the flags string.

use super::maps::{parse_maps_line, MapsEntry};
use super::read::Target;
use super::{ParseError, ProcError};

/// The two-letter `VmFlags` codes this module knows, in bit order of [`VmFlags`].
const KNOWN_CODES: [&str; 36] = [
    "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "pf", "dw", "lo", "io", "sr", "rr", "dc",
    "de", "ac", "nr", "ht", "sf", "nl", "ar", "wf", "dd", "sd", "mm", "hg", "nh", "mg", "bt", "er",
    "ui", "ss", "sl", "lf",
];

/// The `VmFlags` line of one VMA: the raw codes and a bit set of the known ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFlags {
    raw: String,
    known: u64,
}

impl VmFlags {
    /// Parses the value of a `VmFlags:` line (space-separated two-letter codes).
    pub fn parse(raw: &str) -> VmFlags {
        let known = raw
            .split_ascii_whitespace()
            .filter_map(|code| KNOWN_CODES.iter().position(|k| *k == code))
            .fold(0u64, |bits, i| bits | 1 << i);
        VmFlags {
            raw: raw.trim().to_owned(),
            known,
        }
    }

    /// The codes exactly as the kernel printed them, space separated.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Whether the VMA has the two-letter `code`, known to this module or not.
    pub fn has(&self, code: &str) -> bool {
        match KNOWN_CODES.iter().position(|k| *k == code) {
            Some(i) => self.known & (1 << i) != 0,
            None => self.raw.split_ascii_whitespace().any(|c| c == code),
        }
    }

    /// `gd`: stack that grows down (VM_GROWSDOWN).
    pub fn is_growsdown(&self) -> bool {
        self.has("gd")
    }
    /// `dc`: not inherited by fork (MADV_DONTFORK).
    pub fn is_dontfork(&self) -> bool {
        self.has("dc")
    }
    /// `dd`: left out of core dumps (MADV_DONTDUMP).
    pub fn is_dontdump(&self) -> bool {
        self.has("dd")
    }
    /// `wf`: zeroed in the child on fork (MADV_WIPEONFORK).
    pub fn is_wipeonfork(&self) -> bool {
        self.has("wf")
    }
    /// `lo`: pages locked in memory (mlock).
    pub fn is_locked(&self) -> bool {
        self.has("lo")
    }
    /// `mg`: KSM may merge it (MADV_MERGEABLE).
    pub fn is_mergeable(&self) -> bool {
        self.has("mg")
    }
    /// `hg`: MADV_HUGEPAGE.
    pub fn is_hugepage(&self) -> bool {
        self.has("hg")
    }
    /// `nh`: MADV_NOHUGEPAGE.
    pub fn is_nohugepage(&self) -> bool {
        self.has("nh")
    }
    /// `sd`: soft-dirty.
    pub fn is_softdirty(&self) -> bool {
        self.has("sd")
    }
    /// `sh`: shared (VM_SHARED).
    pub fn is_shared(&self) -> bool {
        self.has("sh")
    }
    /// `ms`: may be shared (VM_MAYSHARE).
    pub fn is_mayshare(&self) -> bool {
        self.has("ms")
    }
    /// `io`: memory-mapped I/O.
    pub fn is_io(&self) -> bool {
        self.has("io")
    }
    /// `pf`: pure PFN range (VM_PFNMAP).
    pub fn is_pfnmap(&self) -> bool {
        self.has("pf")
    }
}

/// One VMA of `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmapsEntry {
    /// The maps line that opens the block.
    pub map: MapsEntry,
    /// The `VmFlags:` line.
    pub vm_flags: VmFlags,
    /// `Rss:` in KiB.
    pub rss_kb: u64,
    /// `Anonymous:` in KiB.
    pub anonymous_kb: u64,
    /// `Swap:` in KiB.
    pub swap_kb: u64,
    /// `Locked:` in KiB.
    pub locked_kb: u64,
    /// `AnonHugePages:` in KiB.
    pub anon_huge_pages_kb: u64,
    /// `THPeligible:` is 1.
    pub thp_eligible: bool,
}

impl SmapsEntry {
    fn new(map: MapsEntry) -> Self {
        SmapsEntry {
            map,
            vm_flags: VmFlags::default(),
            rss_kb: 0,
            anonymous_kb: 0,
            swap_kb: 0,
            locked_kb: 0,
            anon_huge_pages_kb: 0,
            thp_eligible: false,
        }
    }
}

/// Parses the whole of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Result<Vec<SmapsEntry>, ParseError> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line_no = i + 1;
        if line.is_empty() {
            continue;
        }
        let first = line.split(' ').next().unwrap_or_default();
        let Some(key) = first.strip_suffix(':') else {
            out.push(SmapsEntry::new(parse_maps_line(line, line_no)?));
            continue;
        };
        let entry = out
            .last_mut()
            .ok_or_else(|| ParseError::new(line_no, format!("'{key}' before any VMA")))?;
        let value = line[first.len()..].trim_start();
        let field = match key {
            "VmFlags" => {
                entry.vm_flags = VmFlags::parse(value);
                continue;
            }
            "THPeligible" => {
                entry.thp_eligible = value.trim() == "1";
                continue;
            }
            "Rss" => &mut entry.rss_kb,
            "Anonymous" => &mut entry.anonymous_kb,
            "Swap" => &mut entry.swap_kb,
            "Locked" => &mut entry.locked_kb,
            "AnonHugePages" => &mut entry.anon_huge_pages_kb,
            _ => continue,
        };
        *field = value
            .strip_suffix(" kB")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| ParseError::new(line_no, format!("bad {key} value '{value}'")))?;
    }
    Ok(out)
}

/// Reads `/proc/PID/smaps` in one read and parses it.
pub fn read_smaps(pid: i32) -> Result<Vec<SmapsEntry>, ProcError> {
    Target::process(pid).parse("smaps", 1 << 20, parse_smaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::maps::MapName;

    /// Two blocks of real `/proc/self/smaps` (kernel 6.18), the second edited to show
    /// a locked, dontdump VMA with swap.
    const FIXTURE: &str = "\
55f966b97000-55f966b99000 r--p 00000000 fe:00 247282                     /usr/bin/head
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   8 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         8 kB
Private_Dirty:         0 kB
Referenced:            8 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd mr mw me 
7ffe8b480000-7ffe8b4a1000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                  20 kB
Pss:                  20 kB
Anonymous:            16 kB
AnonHugePages:         0 kB
Swap:                  4 kB
Locked:               20 kB
THPeligible:           1
ProtectionKey:         0
VmFlags: rd wr mr mw me gd ac lo dd zz 
";

    #[test]
    fn parses_real_smaps() {
        let smaps = parse_smaps(FIXTURE).unwrap();
        assert_eq!(smaps.len(), 2);
        assert_eq!(smaps[0].rss_kb, 8);
        assert_eq!(smaps[0].anonymous_kb, 0);
        assert_eq!(smaps[0].vm_flags.raw(), "rd mr mw me");
        assert!(!smaps[0].vm_flags.is_growsdown());
        assert!(!smaps[0].thp_eligible);
        let stack = &smaps[1];
        assert_eq!(stack.map.name, MapName::Stack);
        assert_eq!(
            (
                stack.rss_kb,
                stack.anonymous_kb,
                stack.swap_kb,
                stack.locked_kb
            ),
            (20, 16, 4, 20)
        );
        assert!(stack.thp_eligible);
        let f = &stack.vm_flags;
        assert!(f.is_growsdown() && f.is_locked() && f.is_dontdump() && f.has("ac"));
        assert!(f.has("zz"), "unknown codes are kept");
        assert!(!f.is_dontfork() && !f.is_shared() && !f.is_mayshare() && !f.is_io());
    }

    #[test]
    fn rejects_attributes_before_a_vma_and_bad_numbers() {
        assert_eq!(
            parse_smaps("Rss: 4 kB\n").unwrap_err(),
            ParseError::new(1, "'Rss' before any VMA")
        );
        let text = "1000-2000 rw-p 00000000 00:00 0 \nRss:   x kB\n";
        assert_eq!(parse_smaps(text).unwrap_err().line, 2);
    }

    #[test]
    fn reads_own_smaps_consistently_with_maps() {
        let pid = std::process::id() as i32;
        let smaps = read_smaps(pid).unwrap();
        assert!(!smaps.is_empty());
        let stack = smaps.iter().find(|e| e.map.name == MapName::Stack).unwrap();
        assert!(stack.vm_flags.is_growsdown());
        assert!(stack.rss_kb > 0);
        let maps = crate::proc::maps::read_maps(pid).unwrap();
        assert!(maps.iter().any(|m| m.start == stack.map.start));
    }
}
