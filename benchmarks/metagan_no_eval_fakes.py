"""Re-evaluate a trained metagan run on its own test tasks with eval_fakes=False (no generated
samples in the evaluation forward); see benchmarks/RESULTS.md, "MetaGAN (issue 10, item 2)".

Usage: OMP_NUM_THREADS=1 python benchmarks/metagan_no_eval_fakes.py RUN_DIR
"""

import dataclasses
import json
import sys

import torch

from metareg.runner import load_run

if __name__ == "__main__":
    torch.set_num_threads(1)
    run = load_run(sys.argv[1])
    run.learner.eval()
    run.learner.config = dataclasses.replace(run.learner.config, eval_fakes=False)
    result = run.evaluate(run.config.eval_tasks)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("accuracy")}))
