"""Benchmark: notebooks end to end, grading per submission, and grading a class on one and two workers.

    python -m grader.bench [--skip-notebooks] [--skip-samples] [--class-size 40]   (make bench)  → build/benchmark.json

* every solution notebook end to end (experiments included) and its slowest cell;
* the grading of each sample submission (a real, sandboxed nbgrader run) with its cost breakdown:
  start, imports, model loads, the student's code inside the hidden checks, preparing checks
  (references, answer-key timing — once per worker), the checker and transfers, the other cells;
  and the slowest hidden-test cell of each lab;
* a synthetic class (copies of the samples under other names) graded with 1 and with 2 workers:
  the speed-up, and how many cores each run kept busy on average (one worker already keeps more than
  one core busy, which bounds what a second can add);
* the Lab 3 answer key's Integrated Gradients against captum's (time ratio);
* the Lab 6 answer key dissecting one concept-cnn layer (64 units) on 2,000 concept images.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from grader.grade import REPO, SAMPLES, all_labs, grade


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


def dissection_seconds(n_images: int = 2000, batch_size: int = 200) -> float:
    """Seconds for the Lab 6 answer key to dissect concept-cnn's last conv layer (64 units, 15 concepts)."""
    from grader.answers import lab06
    from grader.fixtures import model
    from xailab.datasets.concepts import concept_names, make_concept_dataset

    data = make_concept_dataset(n_images, seed=3)
    masks = torch.stack([data["masks"][n] for n in concept_names()], 1)
    cnn = model("concept-cnn")

    def dissect():
        acts = lab06.collect_activations(cnn, cnn.features[10], data["images"], batch_size)
        thresholds = lab06.unit_thresholds(acts)
        starts = range(0, n_images, batch_size)
        units = (lab06.unit_masks(acts[i:i + batch_size].contiguous(memory_format=torch.channels_last), thresholds, 64)
                 for i in starts)
        return lab06.dataset_iou(units, (masks[i:i + batch_size] for i in starts))

    return best_time(dissect, repeats=2)


def cell_seconds(nb) -> list[tuple[int, float]]:
    """(cell index, seconds) of each executed code cell, from nbclient's timing metadata."""
    out = []
    for i, cell in enumerate(nb.cells):
        t = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in t and "shell.execute_reply" in t:
            start = datetime.fromisoformat(t["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(t["shell.execute_reply"].replace("Z", "+00:00"))
            out.append((i, (end - start).total_seconds()))
    return out


def notebooks(report: dict) -> None:
    from grader.notebooks import execute

    for lab in all_labs():
        path = next((REPO / "solutions" / lab).glob("*.ipynb"))
        nb, seconds = execute(path)
        slowest = max(cell_seconds(nb), key=lambda c: c[1], default=(None, 0.0))
        report["notebooks"][lab] = {"seconds": round(seconds, 1), "slowest_cell": slowest[0],
                                    "slowest_cell_s": round(slowest[1], 1)}
        print(f"notebook {lab:28s} {seconds:6.1f} s end to end; slowest cell #{slowest[0]} {slowest[1]:.1f} s")


def samples(report: dict, workspace: Path) -> None:
    start = time.perf_counter()
    rows = grade(SAMPLES, workspace=workspace)
    report["samples_total_s"] = round(time.perf_counter() - start, 1)
    for r in rows:
        record = json.loads((workspace / "results" / f"{r.sid}--{r.lab}.json").read_text())
        verdicts = record["verdicts"]
        report["grading"][f"{r.lab}/{r.student}"] = {"seconds": round(r.seconds, 1), "score": r.auto_score,
                                                     "max": r.auto_max, "breakdown": record["timings"],
                                                     "slowest_check_s": round(max((v["seconds"] for v in verdicts),
                                                                                  default=0.0), 1)}
        print(f"grading  {r.lab:28s} {r.student:16s} {r.seconds:6.1f} s ({r.auto_score:g}/{r.auto_max:g})  "
              + "  ".join(f"{k} {v:.1f}" for k, v in record["timings"].items() if k != "total"))
    print(f"all samples, one worker (generate, autograde, feedback, export): {report['samples_total_s']} s")


def synthetic_class(size: int, root: Path) -> Path:
    """`size` submissions: the samples of every lab under new student names, round robin."""
    pool = [(s.name, lab.name) for s in sorted(SAMPLES.iterdir()) if s.is_dir()
            for lab in sorted(s.iterdir()) if lab.is_dir()]
    out = root / "class"
    for i in range(size):
        student, lab = pool[i % len(pool)]
        shutil.copytree(SAMPLES / student / lab, out / f"student{i:03d}-{student.split('-')[1]}" / lab)
    return out


def class_costs(workspace: Path) -> dict:
    """Summed over a graded class: seconds per part of the breakdown, and how many times a worker prepared
    a lab's checks (a lab counts once per worker that prepared any of its checks)."""
    records = [json.loads(p.read_text()) for p in (workspace / "results").glob("*.json")]
    totals = {}
    for record in records:
        for part, seconds in record["timings"].items():
            totals[part] = round(totals.get(part, 0.0) + seconds, 1)
    prepared = {(r["worker"], r["lab"]) for r in records if r["timings"].get("preparing_checks", 0) > 0}
    return {"lab_preparations": len(prepared), "seconds": totals}


def busy_cores() -> tuple[int, int] | None:
    """The machine's (busy, all) CPU ticks so far, from /proc/stat (Linux); None elsewhere."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # all but idle and iowait


def speedup(report: dict, size: int, root: Path) -> None:
    submissions = synthetic_class(size, root)
    times, scores, costs = {}, {}, {}
    for jobs in (1, 2):
        start, ticks = time.perf_counter(), busy_cores()
        rows = grade(submissions, workspace=root / f"ws{jobs}", jobs=jobs)
        times[jobs] = time.perf_counter() - start
        scores[jobs] = {(r.student, r.lab): r.auto_score for r in rows}
        costs[jobs] = class_costs(root / f"ws{jobs}")
        now = busy_cores()
        if ticks and now:  # how many cores the run kept busy on average (the whole machine)
            (busy, total), (busy0, total0) = now, ticks
            costs[jobs]["busy_cores"] = round((os.cpu_count() or 1) * (busy - busy0) / max(1, total - total0), 2)
        print(f"class of {size}: {jobs} worker(s) {times[jobs]:.1f} s ({times[jobs] / size:.1f} s per submission); "
              + f"{costs[jobs].get('busy_cores', '?')} cores busy on average; "
              + f"{costs[jobs]['lab_preparations']} lab preparations; "
              + ", ".join(f"{k} {v:g} s" for k, v in costs[jobs]["seconds"].items()))
    report["class"] = {"size": size, "1_worker_s": round(times[1], 1), "2_workers_s": round(times[2], 1),
                       "speedup": round(times[1] / times[2], 2), "scores_agree": scores[1] == scores[2],
                       "1_worker": costs[1], "2_workers": costs[2]}
    print(f"two-worker speed-up: {report['class']['speedup']}× (scores agree: {report['class']['scores_agree']})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m grader.bench")
    parser.add_argument("--skip-notebooks", action="store_true")
    parser.add_argument("--skip-samples", action="store_true", help="do not grade the samples one by one")
    parser.add_argument("--class-size", type=int, default=40)
    args = parser.parse_args()
    out = REPO / "build" / "benchmark.json"
    out.parent.mkdir(exist_ok=True)
    report = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__,
                          "load_average_at_start": os.getloadavg()},
              "date": time.strftime("%Y-%m-%d %H:%M"), "notebooks": {}, "grading": {}, "class": {}}
    if not args.skip_notebooks:
        notebooks(report)
    with tempfile.TemporaryDirectory(prefix="xailab-bench-") as tmp:
        if not args.skip_samples:
            samples(report, Path(tmp) / "samples")
        if args.class_size:
            speedup(report, args.class_size, Path(tmp))
    report["ig_reference_over_captum"] = round(ig_speed_ratio(), 2)
    print(f"Integrated Gradients, answer key time / captum time: {report['ig_reference_over_captum']}")
    report["lab06_dissect_one_layer_2000_images_s"] = round(dissection_seconds(), 1)
    print(f"Lab 6: one concept-cnn layer dissected on 2,000 images in {report['lab06_dissect_one_layer_2000_images_s']} s")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
