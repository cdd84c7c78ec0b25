"""Speed on a busy machine: the default sinusoid run and a Conv4 MAML step, each quiet and beside
one competing busy process pinned to a core, with metareg's thread choice and with every core.

    python benchmarks/contention.py [--steps 500] [--conv-steps 3]

The competing process (a Python busy loop) is started and stopped by this script.  Prints, per
workload and thread setting, the quiet time, the loaded time and their ratio (goal: loaded within
1.3x of quiet with metareg's choice).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BUSY = "import os\nos.sched_setaffinity(0, {%d})\nwhile True:\n    pass\n"


def run(args: list[str], threads: int | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    extra = ["--set", f"threads={threads}"] if threads else []
    p = subprocess.run([sys.executable, "-m", "metareg", "run", *args, *extra, "--no-save", "--json"],
                       capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    s = json.loads(p.stdout)
    return s["train_time_s"], s["threads"]


def measure(label: str, args: list[str], repeats: int) -> None:
    cores = len(os.sched_getaffinity(0))
    for threads, name in ((None, "metareg's choice"), (cores, f"{cores} threads")):
        quiet = min(run(args, threads)[0] for _ in range(repeats))
        busy = subprocess.Popen([sys.executable, "-c", BUSY % (cores - 1)])
        try:
            time.sleep(0.5)
            loaded = min(run(args, threads)[0] for _ in range(repeats))
        finally:
            busy.kill()
            busy.wait()
        used = run(args, threads)[1]
        print(f"| {label} | {name} ({used}) | {quiet:.2f} s | {loaded:.2f} s | {loaded / quiet:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--conv-steps", type=int, default=3, help="0: skip the Conv4 workload")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    print("| workload | threads | quiet | one busy process beside it | ratio |\n|---|---|---|---|---|")
    measure(f"MAML sinusoid, {a.steps} steps (train time)",
            ["maml", "-b", "sinusoid", "--steps", str(a.steps), "--set", "eval_tasks=2", "--set", "val_every=0"], a.repeats)
    if a.conv_steps <= 0:
        return
    measure(f"MAML Conv4 glyphs 5w1s T=32, {a.conv_steps} steps",
            ["maml", "-b", "glyphs", "--steps", str(a.conv_steps), "--set", "eval_tasks=2", "--set", "val_every=0"],
            a.repeats)


if __name__ == "__main__":
    main()
