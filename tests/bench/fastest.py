"""The fastest algorithm in a `likeness bench --only matmuls|convs --json` file.

`fastest.py FILE [KIND]` (KIND: `matmul`, the default, or `conv3x3`) prints the name of the
algorithm (as `LIKENESS_MATMUL` / `LIKENESS_CONV_ALGORITHM` take it) whose forward + backward row
has the lowest mean time among those that ran without falling back to Burn's default and whose
check row's error is at most 2e-2, other than `burn` itself; prints nothing when the file is
missing or none qualifies. Used by `gpu_bench.sh` to train with those algorithms.
"""

import json
import re
import sys


def fastest(rows, kind="matmul"):
    err = {}
    for r in rows:
        m = re.match(rf"check: {kind} (\S+) ", r["name"])
        if m:
            err[m.group(1)] = r["mean_ms"] / 1e3
    timed = [
        (r["mean_ms"], r["name"].split()[1])
        for r in rows
        if r["name"].startswith(kind + " ") and r["name"].endswith("fwd+bwd")
    ]
    ok = sorted(t for t in timed if t[1] != "burn" and err.get(t[1], 1.0) <= 2e-2)
    return ok[0][1] if ok else ""


if __name__ == "__main__":
    try:
        rows = json.load(open(sys.argv[1]))
    except (OSError, ValueError, IndexError):
        sys.exit(0)
    print(fastest(rows, sys.argv[2] if len(sys.argv) > 2 else "matmul"))
