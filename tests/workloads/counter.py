"""Workload: interpreter state across a checkpoint.

Usage: counter.py <ready-file> <result-file>

Holds a dict, a generator suspended mid-iteration, a counter that keeps
moving while it waits, and the per-process string hash seed; on SIGUSR1 it
checks that all of them are consistent and writes "OK" or "FAIL: ..." and
"pid <getpid()>" to the result file (exit 0 or 1). Single-threaded.
"""

import os
import signal
import sys
import time

ready_path, result_path = sys.argv[1], sys.argv[2]
start_pid = os.getpid()
woken = False


def on_wake(signo, frame):
    global woken
    woken = True


signal.signal(signal.SIGUSR1, on_wake)


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def fibonacci():
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b


FIB_TAKEN = 90
TICK_SLOTS = 16

gen = fibonacci()
for _ in range(FIB_TAKEN):
    next(gen)
table = {f"key{i}": i * i for i in range(5000)}
table["nested"] = {"list": list(range(100)), "tuple": (1, "two", 3.0)}
# str hashes depend on a per-process random seed that lives in memory.
seed_probe = hash("rcr checkpoint probe")
counter = 0

write_atomic(ready_path, "ready\n")
while not woken:
    counter += 1
    table[f"tick{counter % TICK_SLOTS}"] = counter
    time.sleep(0.01)

fails = []


def expect(what, got, want):
    if got != want:
        fails.append(f"{what}: got {got!r}, want {want!r}")


# fib(90) and fib(91), computed independently of the generator.
a, b = 0, 1
for _ in range(FIB_TAKEN):
    a, b = b, a + b
expect("generator next", next(gen), a)
expect("generator next after that", next(gen), b)
for i in range(5000):
    if table[f"key{i}"] != i * i:
        fails.append(f"table key{i} = {table[f'key{i}']!r}")
        break
expect("nested list", table["nested"]["list"], list(range(100)))
expect("nested tuple", table["nested"]["tuple"], (1, "two", 3.0))
expect("counter moved", counter >= 1, True)
for c in range(max(1, counter - TICK_SLOTS + 1), counter + 1):
    expect(f"tick slot for {c}", table[f"tick{c % TICK_SLOTS}"], c)
expect("str hash seed", hash("rcr checkpoint probe"), seed_probe)
pid = os.getpid()
expect("getpid()", pid, start_pid)

verdict = "OK" if not fails else "FAIL: " + "; ".join(fails)
write_atomic(result_path, f"{verdict}\npid {pid}\n")
sys.exit(0 if not fails else 1)
