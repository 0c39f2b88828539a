//! Per-process work that needs no ptrace, spread over a few threads (as
//! many as the machine has cores, never more than there are jobs). The
//! calling thread stays the one that traces: jobs only read and write
//! files and memory. Errors come back as a sequential loop would give
//! them: the one of the first failing job, in job order.

use crate::error::Result;
use crossbeam::channel;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many threads work on `jobs` jobs.
fn workers(jobs: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs)
        .max(1)
}

/// Applies `f` to every item on up to [`workers`] threads and returns the
/// results in item order, or the error of the first item that failed.
/// Items after a failed one are not started.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let threads = workers(items.len());
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let first_failed = AtomicUsize::new(usize::MAX);
    let worker = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items.len() || i > first_failed.load(Ordering::Relaxed) {
                return done;
            }
            let r = f(&items[i]);
            if r.is_err() {
                first_failed.fetch_min(i, Ordering::Relaxed);
            }
            done.push((i, r));
        }
    };
    let mut done: Vec<(usize, Result<R>)> = crossbeam::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|_| worker())).collect();
        handles.into_iter().flat_map(join).collect::<Vec<_>>()
    })
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
    done.sort_unstable_by_key(|&(i, _)| i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Runs `produce` on the calling thread while up to [`workers`] threads
/// apply `work` to each job it hands over, and returns what `produce`
/// returned with the jobs' results in the order they were handed over.
/// Every job has finished when this returns. A failed job's error wins
/// over a later failure of `produce`, since that job came first.
pub fn alongside<J: Send, R: Send, P>(
    work: impl Fn(J) -> Result<R> + Sync,
    produce: impl FnOnce(&mut dyn FnMut(J)) -> Result<P>,
) -> Result<(P, Vec<R>)> {
    let (tx, rx) = channel::unbounded::<(usize, J)>();
    let (produced, mut done) = crossbeam::thread::scope(|s| {
        let handles: Vec<_> = (0..workers(usize::MAX))
            .map(|_| {
                let rx = rx.clone();
                let work = &work;
                s.spawn(move |_| rx.iter().map(|(i, j)| (i, work(j))).collect::<Vec<_>>())
            })
            .collect();
        let mut sent = 0;
        let produced = produce(&mut |job| {
            // The workers hold the receiver until the sender is dropped below.
            let _ = tx.send((sent, job));
            sent += 1;
        });
        drop(tx);
        let done: Vec<_> = handles.into_iter().flat_map(join).collect();
        (produced, done)
    })
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
    done.sort_unstable_by_key(|&(i, _)| i);
    let results = done
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Result<Vec<R>>>()?;
    Ok((produced?, results))
}

/// A worker's results; its panic goes on in the caller.
fn join<T>(h: crossbeam::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn fails_at(bad: &[i32]) -> impl Fn(&i32) -> Result<i32> + Sync + '_ {
        move |&i| {
            if bad.contains(&i) {
                Err(Error::NoSuchProcess { pid: i })
            } else {
                Ok(i * 2)
            }
        }
    }

    #[test]
    fn map_keeps_order_and_gives_the_first_error() {
        let items: Vec<i32> = (0..100).collect();
        let out = map(&items, fails_at(&[])).unwrap();
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        for _ in 0..20 {
            match map(&items, fails_at(&[70, 13, 40])) {
                Err(Error::NoSuchProcess { pid }) => assert_eq!(pid, 13),
                other => panic!("expected the error of item 13, got {other:?}"),
            }
        }
        assert!(map(&[] as &[i32], fails_at(&[])).unwrap().is_empty());
    }

    #[test]
    fn alongside_keeps_order_and_prefers_the_earlier_error() {
        let produce = |n: i32, fail: bool| {
            move |send: &mut dyn FnMut(i32)| {
                (0..n).for_each(&mut *send);
                if fail {
                    Err(Error::NoSuchProcess { pid: -1 })
                } else {
                    Ok(n)
                }
            }
        };
        let (n, out) = alongside(|i| fails_at(&[])(&i), produce(50, false)).unwrap();
        assert_eq!(n, 50);
        assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        match alongside(|i| fails_at(&[30, 7])(&i), produce(50, true)) {
            Err(Error::NoSuchProcess { pid }) => assert_eq!(pid, 7),
            other => panic!("expected the error of job 7, got {other:?}"),
        }
        match alongside(|i| fails_at(&[])(&i), produce(5, true)) {
            Err(Error::NoSuchProcess { pid }) => assert_eq!(pid, -1),
            other => panic!("expected the producer's error, got {other:?}"),
        }
    }
}
