//! `/proc/self/maps` as data, for workloads that check what is mapped where.

use std::fs;

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    /// e.g. `rw-p`, `r--s`, `---p`.
    pub perms: String,
    pub offset: u64,
    /// The path or pseudo-name (`[heap]`); empty for anonymous memory.
    pub name: String,
}

/// Parses the text of a maps file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.to_string();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let name = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        name,
    })
}

/// The mappings of the calling process.
pub fn current() -> std::io::Result<Vec<Mapping>> {
    Ok(parse(&fs::read_to_string("/proc/self/maps")?))
}

/// The mapping that holds `addr`, if any.
pub fn find(maps: &[Mapping], addr: usize) -> Option<&Mapping> {
    maps.iter().find(|m| m.start <= addr && addr < m.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000004000 rw-s 00002000 08:01 1234                       /tmp/x y.dat
7f0000004000-7f0000005000 ---p 00000000 00:00 0 
";

    #[test]
    fn parses_names_with_spaces_and_anonymous() {
        let maps = parse(SAMPLE);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].name, "[heap]");
        assert_eq!(maps[1].name, "/tmp/x y.dat");
        assert_eq!(maps[1].offset, 0x2000);
        assert_eq!(maps[1].perms, "rw-s");
        assert_eq!(maps[2].name, "");
        assert_eq!(find(&maps, 0x7f0000004800).unwrap().perms, "---p");
        assert!(find(&maps, 0x7f0000005000).is_none());
    }
}
