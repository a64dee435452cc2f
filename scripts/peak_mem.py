#!/usr/bin/env python3
"""Peak memory of a process tree, sampled from /proc (Linux only, no extra packages).

As a wrapper:   scripts/peak_mem.py [--json FILE] -- CMD ARGS...
    runs CMD, passes its exit status through, and writes (to FILE, else stderr) one JSON line:
    {"seconds": wall, "peak_rss_mb": ..., "peak_pss_mb": ..., "max_proc_rss_mb": ..., "rc": ...}
As a library:   with TreeMemSampler(os.getpid()) as s: ...;  s.result()

Why sampling: a multi-process pipeline (datatrove's LocalPipelineExecutor with a forkserver pool)
has its workers as grandchildren, reaped by the forkserver, so neither `/usr/bin/time -v` nor
getrusage(RUSAGE_CHILDREN) sees them, and both report only the largest single process anyway.
  peak_rss_mb      peak over time of the summed RSS of the root and all its descendants
                   (shared pages, e.g. forked interpreter pages, are counted once per process)
  peak_pss_mb      the same with PSS (shared pages split between the sharers): the fairer total
  max_proc_rss_mb  the largest ru_maxrss of one process (what `/usr/bin/time -v` calls
                   "Maximum resident set size"); for a single-process tool this is its exact peak
Samples every 50 ms (PSS every 200 ms), so a spike shorter than that can be missed.
"""

import json
import os
import resource
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree(root):
    seen, stack = [], [root]
    while stack:
        p = stack.pop()
        seen.append(p)
        stack.extend(_children(p))
    return seen


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def vmhwm_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemSampler:
    def __init__(self, root, interval=0.05, pss_every=4):
        self.root, self.interval, self.pss_every = root, interval, pss_every
        self.peak_rss = self.peak_pss = self.max_hwm = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        k = 0
        while not self._stop.is_set():
            pids = tree(self.root)
            self.peak_rss = max(self.peak_rss, sum(rss_bytes(p) for p in pids))
            self.max_hwm = max([self.max_hwm] + [vmhwm_bytes(p) for p in pids])
            if k % self.pss_every == 0:
                self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in pids))
            k += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self.t0 = time.time()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.seconds = time.time() - self.t0

    def result(self):
        ru = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if self.root == os.getpid():  # sampling ourselves: count our own peak too
            ru = max(ru, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        mb = lambda b: round(b / (1 << 20), 1)  # noqa: E731
        return {
            "peak_rss_mb": mb(self.peak_rss),
            "peak_pss_mb": mb(self.peak_pss),
            "max_proc_rss_mb": mb(max(ru * 1024, self.max_hwm)),
        }


def main():
    argv = sys.argv[1:]
    out = None
    if argv[:1] == ["--json"]:
        out, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit(__doc__)
    t0 = time.time()
    proc = subprocess.Popen(argv)
    s = TreeMemSampler(proc.pid)
    with s:
        rc = proc.wait()
    res = {"seconds": round(time.time() - t0, 3), **s.result(), "rc": rc}
    line = json.dumps(res)
    if out:
        with open(out, "w") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
