"""Bad input, tried as a hostile user would: every case should get one clean line and exit 2 (or
1 for a run that diverges), no traceback, and no folder left behind.

    python benchmarks/bad_inputs.py            # prints a markdown table for RESULTS.md
    python benchmarks/bad_inputs.py --check    # exit 1 if any case is answered badly

tests/test_bad_inputs.py runs a sample of these cases in the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = ["run", "maml", "-b", "sinusoid", "--steps", "1", "--set", "eval_tasks=2", "--set", "val_every=0"]


def _omniglot_folder(root: Path, damage: str) -> Path:
    """A tiny Omniglot layout (2 alphabets x 2 characters x 2 drawings per split) with one image
    damaged: ``bomb`` (a PNG header declaring 100,000 x 100,000 pixels) or ``garbage`` bytes."""
    import struct
    import zlib

    from PIL import Image

    for folder in ("images_background", "images_evaluation"):
        for a in range(2):
            for c in range(2):
                d = root / folder / f"alpha{a}" / f"character{c + 1:02d}"
                d.mkdir(parents=True)
                for i in range(2):
                    Image.new("L", (28, 28), 255 - 40 * i).save(d / f"{c:04d}_{i:02d}.png")
    victim = root / "images_background" / "alpha1" / "character02" / "0001_01.png"
    if damage == "garbage":
        victim.write_bytes(b"\x00not an image")
    else:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
        victim.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                           + chunk(b"IEND", b""))
    return root


def _cases(tmp: Path) -> list[tuple[str, list[str], int]]:
    toml_conflict = tmp / "conflict.toml"
    toml_conflict.write_text("shots = 5\n[benchmark]\nshots = 3\n")
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("shots = \n")
    crafted = tmp / "crafted"
    crafted.mkdir()
    (crafted / "config.json").write_text(json.dumps({"algorithm": ["maml"], "benchmark": 3}))
    (crafted / "checkpoint.pt").write_bytes(b"junk")
    huge = tmp / "huge"
    huge.mkdir()
    (huge / "config.json").write_text(json.dumps({"algorithm": "maml", "benchmark": "sinusoid",
                                                  "run_config": {"eval_tasks": 10**12}}))
    (huge / "checkpoint.pt").write_bytes(b"junk")
    notdict = tmp / "notdict"
    notdict.mkdir()
    (notdict / "config.json").write_text("[1, 2, 3]")
    (notdict / "checkpoint.pt").write_bytes(b"junk")
    omni = ["run", "protonet", "-b", "omniglot", "--steps", "1", "--set", "split=lake", "--set", "ways=2",
            "--set", "shots=1", "--set", "query=1"]
    real = tmp / "real_run"  # a genuine run folder, for the cases that need one
    subprocess.run([sys.executable, "-m", "metareg", *RUN, "--out", str(real)], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    import numpy as np

    wrong = tmp / "wrong_shape.npz"  # sinusoid takes [T, N, 1] inputs; these are images
    np.savez(wrong, support_x=np.zeros((2, 5, 1, 28, 28), np.float32), support_y=np.zeros((2, 5, 1), np.float32),
             query_x=np.zeros((2, 5, 1, 28, 28), np.float32), query_y=np.zeros((2, 5, 1), np.float32))
    bomb = _omniglot_folder(tmp / "omniglot_bomb", "bomb")
    garbage = _omniglot_folder(tmp / "omniglot_garbage", "garbage")
    return [
        ("negative seed", [*RUN, "--seed", "-1"], 2),
        ("seed past the 64-bit range", [*RUN, "--seed", str(2**64)], 2),
        ("zero steps", [*RUN[:4], "--steps", "0"], 2),
        ("steps = 10^12", [*RUN[:4], "--steps", str(10**12)], 2),
        ("inner_steps = 10^6", [*RUN, "--set", "inner_steps=1000000"], 2),
        ("meta_batch = 10^9 (glyphs)", ["run", "protonet", "-b", "glyphs", "--set", "meta_batch=1000000000", "--steps", "1"], 2),
        ("ways = 10^6 (glyphs)", ["run", "protonet", "-b", "glyphs", "--set", "ways=1000000", "--steps", "1"], 2),
        ("shots = 0", [*RUN, "--set", "shots=0"], 2),
        ("x_min = x_max", [*RUN, "--set", "x_min=1", "--set", "x_max=1"], 2),
        ("lr = nan", [*RUN, "--set", "lr=nan"], 2),
        ("lr = -1", [*RUN, "--set", "lr=-1"], 2),
        ("a string for a number", [*RUN, "--set", "inner_lr=fast"], 2),
        ("unknown key", [*RUN, "--set", "inner_lrr=0.1"], 2),
        ("two pairs in one --set", [*RUN, "--set", "adapt_encoder=true head_fit=sgd"], 2),
        ("--out and --no-save", [*RUN, "--out", str(tmp / "o1"), "--no-save"], 2),
        ("empty --out", [*RUN, "--out", ""], 2),
        ("flat and sectioned TOML disagree", [*RUN, "--config", str(toml_conflict)], 2),
        ("malformed TOML", [*RUN, "--config", str(bad_toml)], 2),
        ("unknown algorithm", ["run", "mamll", "-b", "sinusoid"], 2),
        ("combiner as a learner", ["run", "pcgrad", "-b", "sinusoid_mtl"], 2),
        ("classification learner on regression", ["run", "protonet", "-b", "sinusoid", "--steps", "1"], 2),
        ("image backbone on vectors", [*RUN, "--set", "backbone=conv4"], 2),
        ("dataset folder missing", ["run", "protonet", "-b", "omniglot", "--steps", "1", "--set", "data_dir=/nonexistent"], 2),
        ("decompression bomb in a dataset folder", [*omni, "--set", f"data_dir={bomb}"], 2),
        ("unreadable image in a dataset folder", [*omni, "--set", f"data_dir={garbage}"], 2),
        ("cuda without a GPU", [*RUN, "--device", "cuda"], 2),
        ("crafted config.json (wrong types)", ["eval", str(crafted)], 2),
        ("crafted config.json (huge eval_tasks)", ["eval", str(huge)], 2),
        ("config.json not an object", ["eval", str(notdict)], 2),
        ("resume a folder that is not a run", ["run", "--resume", str(tmp)], 2),
        ("eval a missing folder", ["eval", str(tmp / "missing")], 2),
        ("eval --tasks: not a task file", ["eval", str(real), "--tasks", str(bad_toml)], 2),
        ("eval --tasks of the wrong shape", ["eval", str(real), "--tasks", str(wrong)], 2),
        ("compare --out and --no-save", ["compare", "maml", "fomaml", "-b", "sinusoid", "--out", str(tmp / "o2"),
                                         "--no-save"], 2),
        ("diverging run (lr 1e30, SGD)", [*RUN[:4], "--steps", "5", "--set", "optimizer=sgd", "--set", "lr=1e30",
                                          "--no-save"], 1),
    ]


def run_cases() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for label, argv, want in _cases(tmp):
            before = set(Path("runs").iterdir()) if Path("runs").is_dir() else set()
            p = subprocess.run([sys.executable, "-m", "metareg", *argv], capture_output=True, text=True, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
            after = set(Path("runs").iterdir()) if Path("runs").is_dir() else set()
            lines = [ln for ln in p.stderr.splitlines() if ln.startswith(("Error:", "warning:"))]
            rows.append({"case": label, "exit": p.returncode, "want": want, "answer": lines[-1] if lines else p.stderr[-200:],
                         "traceback": "Traceback" in p.stderr, "folder_left": bool(after - before),
                         "ok": p.returncode == want and "Traceback" not in p.stderr and not (after - before)})
    return rows


def main() -> int:
    rows = run_cases()
    print("| case | exit | answer |\n|---|---|---|")
    for r in rows:
        flag = "" if r["ok"] else " **(bad)**"
        answer = r["answer"].replace("|", "\\|")
        print(f"| {r['case']} | {r['exit']}{flag} | {answer} |")
    bad = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} answered with one line, the right exit status and no folder.")
    return 1 if bad and "--check" in sys.argv else 0


if __name__ == "__main__":
    sys.exit(main())
