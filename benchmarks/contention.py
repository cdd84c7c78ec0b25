"""Speed on a busy machine: the default sinusoid run and a Conv4 MAML step, each quiet and beside
one competing busy process pinned to a core, with metareg's thread choice and the alternatives.

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


def run(args: list[str], extra: list[str]) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    p = subprocess.run([sys.executable, "-m", "metareg", "run", *args, *extra, "--no-save", "--json"],
                       capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    s = json.loads(p.stdout)
    return s["train_time_s"], s["threads"]


def measure(label: str, args: list[str], repeats: int, settings: list[tuple[str, list[str]]]) -> None:
    cores = len(os.sched_getaffinity(0))
    for name, extra in settings:
        quiet = min(run(args, extra)[0] for _ in range(repeats))
        busy = subprocess.Popen([sys.executable, "-c", BUSY % (cores - 1)])
        try:
            time.sleep(0.5)
            loaded = min(run(args, extra)[0] for _ in range(repeats))
        finally:
            busy.kill()
            busy.wait()
        used = run(args, extra)[1]
        print(f"| {label} | {name} ({used}) | {quiet:.2f} s | {loaded:.2f} s | {loaded / quiet:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500, help="0: skip the sinusoid workload")
    ap.add_argument("--conv-steps", type=int, default=3, help="0: skip the Conv4 workload")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    every_core = (f"{cores} threads", ["--set", f"threads={cores}"])
    print("| workload | threads | quiet | one busy process beside it | ratio |\n|---|---|---|---|---|")
    if a.steps > 0:
        measure(f"MAML sinusoid, {a.steps} steps (train time)",
                ["maml", "-b", "sinusoid", "--steps", str(a.steps), "--set", "eval_tasks=2", "--set", "val_every=0"],
                a.repeats, [("metareg's choice", []), every_core])
    if a.conv_steps > 0:
        # metareg's choice there: every core, the meta-batch's task chunks one per thread
        # (task_parallel); against each op split across the cores, and one thread
        measure(f"MAML Conv4 glyphs 5w1s T=32, {a.conv_steps} steps",
                ["maml", "-b", "glyphs", "--steps", str(a.conv_steps), "--set", "eval_tasks=2", "--set", "val_every=0"],
                a.repeats, [("metareg's choice: task chunks per thread", []),
                            ("each op split across threads", ["--set", "task_parallel=false"]),
                            ("one thread", ["--set", "threads=1"])])


if __name__ == "__main__":
    main()
