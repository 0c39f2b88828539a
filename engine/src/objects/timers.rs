//! Interval timers (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF), dump and restore.

use rcr_images::pb;
use rcr_parasite::restore_abi::{Itimerval, Timeval};

/// Dump side: the three timers as the parasite read them, armed ones only.
pub fn dump_itimers(timers: &[Itimerval; 3]) -> Vec<pb::Itimer> {
    timers
        .iter()
        .enumerate()
        .filter(|(_, t)| **t != Itimerval::default())
        .map(|(which, t)| pb::Itimer {
            which: which as u32,
            interval_us: to_us(t.interval),
            value_us: to_us(t.value),
        })
        .collect()
}

fn to_us(t: Timeval) -> u64 {
    (t.sec.max(0) as u64) * 1_000_000 + t.usec.max(0) as u64
}

fn from_us(us: u64) -> Timeval {
    Timeval {
        sec: (us / 1_000_000) as i64,
        usec: (us % 1_000_000) as i64,
    }
}

/// Restore side: the values to arm, by `which`. A timer that was about to
/// fire keeps at least a microsecond so that it still fires.
pub fn restore_itimers(saved: &[pb::Itimer]) -> [Itimerval; 3] {
    let mut out = [Itimerval::default(); 3];
    for t in saved.iter().filter(|t| t.which < 3) {
        let value = t.value_us.max(1);
        out[t.which as usize] = Itimerval {
            interval: from_us(t.interval_us),
            value: from_us(value),
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
            Itimerval {
                interval: Timeval {
                    sec: 5,
                    usec: 250_000,
                },
                value: Timeval { sec: 3, usec: 1 },
            },
            Itimerval::default(),
            Itimerval {
                interval: Timeval::default(),
                value: Timeval { sec: 100, usec: 0 },
            },
        ];
        let saved = dump_itimers(&timers);
        assert_eq!(saved.len(), 2);
        assert_eq!(restore_itimers(&saved), timers);
    }
}
