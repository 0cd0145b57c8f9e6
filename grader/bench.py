"""Benchmark: each solution notebook end to end, and the grading of each sample submission.

    python -m grader.bench        (make bench)  → build/benchmark.json and a printed table

Grading times come from a real nbgrader autograde run per submission (kernel start included);
the last figure compares the Lab 3 answer key's Integrated Gradients with captum's (time ratio).
"""
from __future__ import annotations

import json
import os
import platform
import time

import torch

from grader.grade import REPO, SAMPLES, all_labs, grade
from grader.notebooks import execute


def best_time(f, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def ig_speed_ratio(n_digits: int = 8, n_steps: int = 64, batch_size: int = 128) -> float:
    """Time of the answer key's Integrated Gradients / captum's, same inputs, rule and steps."""
    from captum.attr import IntegratedGradients

    from grader.answers import lab03
    from grader.fixtures import mnist_batch, model

    x, y = mnist_batch(n_digits)
    m = model("mnist-cnn")
    ours = best_time(lambda: lab03.integrated_gradients(m, x, y, n_steps=n_steps, batch_size=batch_size))
    theirs = best_time(lambda: IntegratedGradients(m).attribute(x, target=y, n_steps=n_steps, method="riemann_middle",
                                                                internal_batch_size=batch_size))
    return ours / theirs


def main() -> None:
    out = REPO / "build" / "benchmark.json"
    out.parent.mkdir(exist_ok=True)
    report = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d %H:%M"), "notebooks_s": {}, "grading_s": {}}
    for lab in all_labs():
        path = next((REPO / "solutions" / lab).glob("*.ipynb"))
        _, seconds = execute(path)
        report["notebooks_s"][lab] = round(seconds, 1)
        print(f"notebook {lab:22s} {seconds:6.1f} s end to end")
    start = time.perf_counter()
    rows = grade(SAMPLES, workspace=REPO / "build" / "bench-grading")
    report["grading_total_s"] = round(time.perf_counter() - start, 1)
    for r in rows:
        report["grading_s"][f"{r.lab}/{r.student}"] = round(r.seconds, 1)
        print(f"grading  {r.lab:22s} {r.student:16s} {r.seconds:6.1f} s  ({r.auto_score:g}/{r.auto_max:g})")
    print(f"whole grading run (generate, autograde, feedback, export): {report['grading_total_s']} s")
    report["ig_reference_over_captum"] = round(ig_speed_ratio(), 2)
    print(f"Integrated Gradients, answer key time / captum time: {report['ig_reference_over_captum']}")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
