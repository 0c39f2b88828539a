//! `/proc/PID/maps`: one line per VMA.
//!
//! Line format (fs/proc/task_mmu.c): `start-end perms offset major:minor inode`, then,
//! when the VMA has a name, spaces up to column 73 and the name. Names are paths
//! (possibly with spaces and a " (deleted)" suffix) or bracketed kernel names.

use std::borrow::Cow;
use std::fmt;

use super::read::Target;
use super::{split_deleted, ParseError, ProcError};

/// What a VMA maps, from the name column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapName {
    /// No name: anonymous memory.
    Anonymous,
    /// A file (also `/dev/zero (deleted)` for shared anonymous memory, `/memfd:x`,
    /// `/SYSV...` for SysV shm).
    Path {
        /// The path without the " (deleted)" suffix.
        path: String,
        /// The kernel appended " (deleted)": the file was unlinked.
        deleted: bool,
    },
    /// `[heap]`.
    Heap,
    /// `[stack]` (the main thread's stack).
    Stack,
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`.
    Vvar,
    /// `[vvar_vclock]`.
    VvarVclock,
    /// `[vsyscall]`.
    Vsyscall,
    /// Any other name, kept verbatim: `[uprobes]`, `[anon:xyz]`, `[anon_shmem:xyz]`.
    Other(String),
}

impl MapName {
    /// Classifies the name column of a maps line (empty for anonymous memory).
    pub fn from_field(field: &str) -> MapName {
        match field {
            "" => MapName::Anonymous,
            "[heap]" => MapName::Heap,
            "[stack]" => MapName::Stack,
            "[vdso]" => MapName::Vdso,
            "[vvar]" => MapName::Vvar,
            "[vvar_vclock]" => MapName::VvarVclock,
            "[vsyscall]" => MapName::Vsyscall,
            _ if field.starts_with('/') => {
                let (path, deleted) = split_deleted(field);
                MapName::Path {
                    path: path.to_owned(),
                    deleted,
                }
            }
            _ => MapName::Other(field.to_owned()),
        }
    }

    /// The name column as the kernel prints it.
    pub fn to_field(&self) -> Cow<'_, str> {
        match self {
            MapName::Anonymous => Cow::Borrowed(""),
            MapName::Path {
                path,
                deleted: false,
            } => Cow::Borrowed(path),
            MapName::Path {
                path,
                deleted: true,
            } => Cow::Owned(format!("{path} (deleted)")),
            MapName::Heap => Cow::Borrowed("[heap]"),
            MapName::Stack => Cow::Borrowed("[stack]"),
            MapName::Vdso => Cow::Borrowed("[vdso]"),
            MapName::Vvar => Cow::Borrowed("[vvar]"),
            MapName::VvarVclock => Cow::Borrowed("[vvar_vclock]"),
            MapName::Vsyscall => Cow::Borrowed("[vsyscall]"),
            MapName::Other(name) => Cow::Borrowed(name),
        }
    }
}

/// One VMA as `/proc/PID/maps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: u32,
    /// `s` (MAP_SHARED) rather than `p` (private).
    pub shared: bool,
    /// File offset in bytes (the page offset for anonymous shared memory).
    pub offset: u64,
    /// Device major of the backing file.
    pub dev_major: u32,
    /// Device minor of the backing file.
    pub dev_minor: u32,
    /// Inode of the backing file, 0 for anonymous memory.
    pub inode: u64,
    /// What is mapped.
    pub name: MapName,
}

impl MapsEntry {
    /// Length of the VMA in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }
}

/// Column where the kernel starts the name (it pads the header with spaces to 72, then
/// adds one more space).
const NAME_PAD: usize = 72;

impl fmt::Display for MapsEntry {
    /// Renders the line as the kernel does, without the newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let perms = [
            if self.prot & libc::PROT_READ as u32 != 0 {
                'r'
            } else {
                '-'
            },
            if self.prot & libc::PROT_WRITE as u32 != 0 {
                'w'
            } else {
                '-'
            },
            if self.prot & libc::PROT_EXEC as u32 != 0 {
                'x'
            } else {
                '-'
            },
            if self.shared { 's' } else { 'p' },
        ];
        let perms: String = perms.iter().collect();
        let header = format!(
            "{:08x}-{:08x} {perms} {:08x} {:02x}:{:02x} {}",
            self.start, self.end, self.offset, self.dev_major, self.dev_minor, self.inode
        );
        let name = self.name.to_field();
        if name.is_empty() {
            write!(f, "{header} ")
        } else {
            write!(f, "{header:<NAME_PAD$} {name}")
        }
    }
}

/// Parses the whole of `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Result<Vec<MapsEntry>, ParseError> {
    // Not `lines()`: it would also eat a '\r' that ends a file name.
    text.split('\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| parse_maps_line(line, i + 1))
        .collect()
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: i32) -> Result<Vec<MapsEntry>, ProcError> {
    Target::process(pid).parse("maps", 64 * 1024, parse_maps)
}

/// Parses one maps line (also the header line of each smaps block); `line_no` is used in
/// errors only.
pub fn parse_maps_line(line: &str, line_no: usize) -> Result<MapsEntry, ParseError> {
    let bad = |what: &str, text: &str| ParseError::new(line_no, format!("bad {what} '{text}'"));
    let mut rest = line;
    let range = next_field(&mut rest).ok_or_else(|| bad("line", line))?;
    let (start, end) = range
        .split_once('-')
        .and_then(|(s, e)| Some((hex(s)?, hex(e)?)))
        .filter(|(s, e)| s <= e)
        .ok_or_else(|| bad("address range", range))?;
    let perms = next_field(&mut rest).ok_or_else(|| bad("line", line))?;
    let (prot, shared) = parse_perms(perms).ok_or_else(|| bad("permissions", perms))?;
    let offset_text = next_field(&mut rest).ok_or_else(|| bad("line", line))?;
    let offset = hex(offset_text).ok_or_else(|| bad("offset", offset_text))?;
    let dev = next_field(&mut rest).ok_or_else(|| bad("line", line))?;
    let (dev_major, dev_minor) = dev
        .split_once(':')
        .and_then(|(ma, mi)| Some((hex32(ma)?, hex32(mi)?)))
        .ok_or_else(|| bad("device", dev))?;
    let inode_text = next_field(&mut rest).ok_or_else(|| bad("line", line))?;
    let inode = inode_text
        .parse::<u64>()
        .map_err(|_| bad("inode", inode_text))?;
    Ok(MapsEntry {
        start,
        end,
        prot,
        shared,
        offset,
        dev_major,
        dev_minor,
        inode,
        name: MapName::from_field(rest.trim_start_matches(' ')),
    })
}

/// Takes the next single-space separated field; what remains starts after the space.
fn next_field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let (field, tail) = match rest.split_once(' ') {
        Some((field, tail)) => (field, tail),
        None => (*rest, ""),
    };
    *rest = tail;
    (!field.is_empty()).then_some(field)
}

fn hex(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn hex32(s: &str) -> Option<u32> {
    hex(s).and_then(|v| u32::try_from(v).ok())
}

fn parse_perms(perms: &str) -> Option<(u32, bool)> {
    let b = perms.as_bytes();
    if b.len() != 4 {
        return None;
    }
    let bit = |c: u8, set: u8, value: i32| match c {
        _ if c == set => Some(value as u32),
        b'-' => Some(0),
        _ => None,
    };
    let prot = bit(b[0], b'r', libc::PROT_READ)?
        | bit(b[1], b'w', libc::PROT_WRITE)?
        | bit(b[2], b'x', libc::PROT_EXEC)?;
    let shared = match b[3] {
        b's' => true,
        b'p' => false,
        _ => return None,
    };
    Some((prot, shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Real `/proc/self/maps` of `cat` on the development machine (kernel 6.18), plus a
    /// deleted file with spaces, a SysV segment, a memfd and a named anonymous VMA.
    const FIXTURE: &str = "\
55afc0de6000-55afc0de8000 r--p 00000000 fe:00 247030                     /usr/bin/cat
55afe4a6b000-55afe4a8c000 rw-p 00000000 00:00 0                          [heap]
7f289e57b000-7f289e59d000 rw-p 00000000 00:00 0 
7f289e5f8000-7f289e5f9000 r--p 00000000 fe:00 316538                     /usr/lib/locale/C.utf8/LC_MESSAGES/SYS_LC_MESSAGES
7f289e626000-7f289e77c000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f289e7e3000-7f289e7ea000 r--s 00000000 fe:00 325745                     /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache
7f289e7ed000-7f289e7f1000 r--p 00000000 00:00 0                          [vvar]
7f289e7f1000-7f289e7f3000 r--p 00000000 00:00 0                          [vvar_vclock]
7f289e7f3000-7f289e7f5000 r-xp 00000000 00:00 0                          [vdso]
7ffe8b480000-7ffe8b4a1000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
7f0000000000-7f0000001000 rw-p 00001000 08:11 99                         /tmp/my file (x) (deleted)
7f0000001000-7f0000002000 rw-s 00000000 00:01 32768                      /SYSV00000000 (deleted)
7f0000002000-7f0000003000 rw-s 00000000 00:01 1025                       /memfd:buf (deleted)
7f0000003000-7f0000004000 rw-p 00000000 00:00 0                          [anon:jit cache]
";

    #[test]
    fn parses_real_maps() {
        let maps = parse_maps(FIXTURE).unwrap();
        assert_eq!(maps.len(), 15);
        assert_eq!(
            maps[0],
            MapsEntry {
                start: 0x55afc0de6000,
                end: 0x55afc0de8000,
                prot: libc::PROT_READ as u32,
                shared: false,
                offset: 0,
                dev_major: 0xfe,
                dev_minor: 0,
                inode: 247030,
                name: MapName::Path {
                    path: "/usr/bin/cat".into(),
                    deleted: false
                },
            }
        );
        assert_eq!(maps[1].name, MapName::Heap);
        assert_eq!(maps[2].name, MapName::Anonymous);
        assert_eq!(maps[2].prot, (libc::PROT_READ | libc::PROT_WRITE) as u32);
        assert_eq!(maps[4].prot, (libc::PROT_READ | libc::PROT_EXEC) as u32);
        assert_eq!(maps[4].offset, 0x26000);
        assert!(maps[5].shared);
        assert_eq!(maps[6].name, MapName::Vvar);
        assert_eq!(maps[7].name, MapName::VvarVclock);
        assert_eq!(maps[8].name, MapName::Vdso);
        assert_eq!(maps[9].name, MapName::Stack);
        assert_eq!(maps[10].name, MapName::Vsyscall);
        assert_eq!(maps[10].start, 0xffffffffff600000);
        assert_eq!(maps[10].prot, libc::PROT_EXEC as u32);
        assert_eq!(
            maps[11].name,
            MapName::Path {
                path: "/tmp/my file (x)".into(),
                deleted: true
            }
        );
        assert_eq!((maps[11].dev_major, maps[11].dev_minor), (8, 0x11));
        assert_eq!(
            maps[12].name,
            MapName::Path {
                path: "/SYSV00000000".into(),
                deleted: true
            }
        );
        assert_eq!(maps[14].name, MapName::Other("[anon:jit cache]".into()));
    }

    #[test]
    fn renders_like_the_kernel() {
        for line in FIXTURE.lines() {
            assert_eq!(parse_maps_line(line, 1).unwrap().to_string(), line);
        }
    }

    #[test]
    fn errors_name_the_line_and_text() {
        let err =
            parse_maps("55afc0de6000-55afc0de8000 r--p 00000000 fe:00 1 /a\nxyz r--p 0 0:0 0\n")
                .unwrap_err();
        assert_eq!(err, ParseError::new(2, "bad address range 'xyz'"));
        let err = parse_maps("1000-2000 rwzp 0 0:0 0").unwrap_err();
        assert_eq!(err.to_string(), "line 1: bad permissions 'rwzp'");
        assert!(parse_maps("2000-1000 rw-p 0 0:0 0").is_err());
        assert!(parse_maps("1000-2000 rw-p 0 0:0").is_err());
    }

    #[test]
    fn reads_own_maps() {
        let maps = read_maps(std::process::id() as i32).unwrap();
        let here = reads_own_maps as fn() as usize as u64;
        let text = maps
            .iter()
            .find(|m| m.start <= here && here < m.end)
            .expect("code VMA");
        assert!(text.prot & libc::PROT_EXEC as u32 != 0);
        assert!(matches!(text.name, MapName::Path { .. }));
        assert!(maps.iter().any(|m| m.name == MapName::Vdso));
    }

    fn name_strategy() -> impl Strategy<Value = MapName> {
        prop_oneof![
            Just(MapName::Anonymous),
            Just(MapName::Heap),
            Just(MapName::Stack),
            Just(MapName::Vdso),
            Just(MapName::Vvar),
            Just(MapName::VvarVclock),
            Just(MapName::Vsyscall),
            ("/[^\n]{0,40}", any::<bool>())
                .prop_filter("ambiguous suffix", |(p, _)| !p.ends_with(" (deleted)"))
                .prop_map(|(path, deleted)| MapName::Path { path, deleted }),
            "\\[anon:[a-z0-9 ]{0,12}\\]".prop_map(MapName::Other),
        ]
    }

    fn entry_strategy() -> impl Strategy<Value = MapsEntry> {
        (
            any::<u64>(),
            any::<u64>(),
            0u32..8,
            any::<bool>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            name_strategy(),
        )
            .prop_map(
                |(a, b, prot, shared, offset, dev_major, dev_minor, inode, name)| MapsEntry {
                    start: a.min(b),
                    end: a.max(b),
                    prot,
                    shared,
                    offset,
                    dev_major,
                    dev_minor,
                    inode,
                    name,
                },
            )
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let _ = parse_maps(&text);
        }

        #[test]
        fn parse_never_panics_on_near_misses(text in "[0-9a-f]{1,4}-[0-9a-f ]{1,4} [rwxps-]{3,5} [0-9a-f:]{0,6} [0-9 ]{0,4}[ /a-z\\[\\]]{0,10}") {
            let _ = parse_maps(&text);
        }

        #[test]
        fn render_parse_round_trip(entries in proptest::collection::vec(entry_strategy(), 0..20)) {
            let text: String = entries.iter().map(|e| format!("{e}\n")).collect();
            prop_assert_eq!(parse_maps(&text).unwrap(), entries);
        }
    }
}
