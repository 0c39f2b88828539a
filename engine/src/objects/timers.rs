//! Interval timers (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF), dump and restore.

use rcr_images::pb;
use rcr_parasite::restore_abi::ItimerVal;

/// Dump side: the three timers as the parasite read them, armed ones only.
pub fn dump_itimers(timers: &[ItimerVal; 3]) -> Vec<pb::Itimer> {
    timers
        .iter()
        .enumerate()
        .filter(|(_, t)| **t != ItimerVal::default())
        .map(|(which, t)| pb::Itimer {
            which: which as u32,
            interval_us: to_us(t.interval_sec, t.interval_usec),
            value_us: to_us(t.value_sec, t.value_usec),
        })
        .collect()
}

fn to_us(sec: i64, usec: i64) -> u64 {
    (sec.max(0) as u64) * 1_000_000 + usec.max(0) as u64
}

/// Restore side: the values to arm, by `which`. A timer that was about to
/// fire keeps at least a microsecond so that it still fires.
pub fn restore_itimers(saved: &[pb::Itimer]) -> [ItimerVal; 3] {
    let mut out = [ItimerVal::default(); 3];
    for t in saved.iter().filter(|t| t.which < 3) {
        let value = t.value_us.max(1);
        out[t.which as usize] = ItimerVal {
            interval_sec: (t.interval_us / 1_000_000) as i64,
            interval_usec: (t.interval_us % 1_000_000) as i64,
            value_sec: (value / 1_000_000) as i64,
            value_usec: (value % 1_000_000) as i64,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let timers = [
            ItimerVal {
                interval_sec: 5,
                interval_usec: 250_000,
                value_sec: 3,
                value_usec: 1,
            },
            ItimerVal::default(),
            ItimerVal {
                interval_sec: 0,
                interval_usec: 0,
                value_sec: 100,
                value_usec: 0,
            },
        ];
        let saved = dump_itimers(&timers);
        assert_eq!(saved.len(), 2);
        assert_eq!(restore_itimers(&saved), timers);
    }
}
