#!/usr/bin/env python3
"""Turns wrk outputs (bench/run.sh writes one file per run, named server.case.conns.N.txt) into medians and ratios.

usage: report.py RAW_DIR PAIRS...   where a pair is "agent=nginx" (the first is measured against the second)
Prints Markdown tables.
"""
import collections
import pathlib
import re
import statistics
import sys

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse(path):
    t = path.read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", t)
    mib = float(tr.group(1)) * BYTES[tr.group(2)] / 1024**2
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    if errors:
        sys.exit(f"{path.name}: {errors.group(1)} error responses; the run is not valid")
    return rps, mib, p50, p99


def main():
    raw = pathlib.Path(sys.argv[1])
    runs = collections.defaultdict(list)
    for f in sorted(raw.glob("*.txt")):
        server, case, conns, _ = f.stem.split(".")
        runs[(server, case, int(conns))].append(parse(f))
    med = {k: [statistics.median(x[i] for x in v) for i in range(4)] + [len(v)] for k, v in runs.items()}
    # Throughput is compared in bytes per second, which counts the answers still arriving when a run ends (at
    # 1,000 connections most 8 MiB answers are), except for `tiny`: its bodies are 2 bytes, so wrk's bytes are
    # mostly headers (the agent sends a few more), and requests per second compare it (bytes made it read 1.2x).
    for pair in sys.argv[2:]:
        a, b = pair.split("=")
        print(f"\n| case | conns | {a} req/s | {b} req/s | {a} MiB/s | {b} MiB/s | throughput {a}/{b} | {a} p50 / p99 ms | {b} p50 / p99 ms | p99 {a}/{b} |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for (server, case, conns) in sorted(k for k in med if k[0] == a):
            if (b, case, conns) not in med:
                continue
            x, y = med[(a, case, conns)], med[(b, case, conns)]
            ratio = x[0] / y[0] if case == "tiny" else x[1] / y[1]
            print(
                f"| {case} | {conns} | {x[0]:.0f} | {y[0]:.0f} | {x[1]:.0f} | {y[1]:.0f} | **{ratio:.2f}x** "
                f"| {x[2]:.2f} / {x[3]:.2f} | {y[2]:.2f} / {y[3]:.2f} | {x[3] / y[3]:.2f}x |"
            )


if __name__ == "__main__":
    main()
