"""Runs the hidden checks on the mutants of the solution regions and reports, per lab and task,
how many were killed, how many survived and how many are listed as equivalent.

Each lab runs in a worker process (`python -m grader.mutation worker`) that sets the checks up once
and judges its mutants one after the other, appending one JSON line per mutant to
build/mutation/<lab>.jsonl. A mutant is killed by the first check it fails (the task's checks run
cheapest first). The worker runs with a memory limit; a mutant that brings it down (a crash, an
allocation beyond the limit, a loop inside one native call that no time limit can stop) would take
a student's notebook kernel down too, so it counts as killed and a new worker goes on with the rest.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from grader.mutation import REPO, Mutant, equivalents, generate, notebook

OUT = REPO / "build" / "mutation"
MEMORY_LIMIT_GB = float(os.environ.get("MUTATION_MEMORY_GB", "12"))  # address space of a worker
STALL_S = float(os.environ.get("MUTATION_STALL_S", "1500"))  # one mutant taking longer than this stopped the worker


# ----------------------------------------------------------------------------- judging one mutant

@dataclass
class TaskChecks:
    """The checks of one task, set up once (references, the answer key's time), cheapest first."""

    checks: list

    @classmethod
    def of(cls, lab: str, task: str) -> "TaskChecks":
        from grader.checks import checks_for

        checks = checks_for(lab, task)
        for chk in checks:
            chk.setup()
        return cls(sorted(checks, key=lambda c: c.key_seconds))


def judge(mutant: Mutant, checks: TaskChecks) -> dict:
    """Run the task's checks on the mutant until one fails: {'status': 'killed'|'survived', ...}."""
    from grader.checks import run_check

    start = time.perf_counter()
    record = {"id": mutant.id, "lab": mutant.lab, "task": mutant.task, "operator": mutant.operator,
              "change": mutant.change}
    try:
        fn = mutant.build(notebook(mutant.lab))
    except Exception as err:  # noqa: BLE001 - the cell itself fails: the student's notebook would too
        return dict(record, status="killed", check="(cell)", message=f"{type(err).__name__}: {err}"[:300],
                    seconds=round(time.perf_counter() - start, 2))
    for chk in checks.checks:
        passed, message = run_check(chk.name, fn)
        if not passed:
            return dict(record, status="killed", check=chk.name, message=message[:300],
                        seconds=round(time.perf_counter() - start, 2))
    return dict(record, status="survived", check=None, message="", seconds=round(time.perf_counter() - start, 2))


# ----------------------------------------------------------------------------- worker process

def _limit_memory() -> None:
    try:
        import resource

        limit = int(MEMORY_LIMIT_GB * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def worker(lab: str, ids_file: Path, out: Path) -> None:
    """Judge the mutants whose ids are listed in `ids_file`, appending records to `out`."""
    import torch

    _limit_memory()
    torch.set_num_threads(2)
    wanted = ids_file.read_text().split()
    by_id = {m.id: m for m in generate(lab)}
    checks: dict[str, TaskChecks] = {}
    with open(out, "a", buffering=1) as f:
        for mid in wanted:
            m = by_id[mid]
            f.write(json.dumps({"start": mid}) + "\n")
            if m.task not in checks:
                checks[m.task] = TaskChecks.of(lab, m.task)
            f.write(json.dumps(judge(m, checks[m.task])) + "\n")


def read_records(path: Path) -> tuple[dict[str, dict], str | None]:
    """(finished records by id, the id started last without a record) from a worker's file."""
    done: dict[str, dict] = {}
    started = None
    if not path.exists():
        return done, None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "start" in rec:
            started = rec["start"]
        elif "id" in rec:
            done[rec["id"]] = rec
            if started == rec["id"]:
                started = None
    return done, started


def run_lab(lab: str, mutants: list[Mutant], resume: bool = False, progress=print) -> list[dict]:
    """Judge `mutants` (all of one lab) in worker processes; return one record per mutant."""
    OUT.mkdir(parents=True, exist_ok=True)
    out, ids_file, log = OUT / f"{lab}.jsonl", OUT / f"{lab}.ids", OUT / f"{lab}.log"
    if not resume and out.exists():
        out.unlink()
    by_id = {m.id: m for m in mutants}
    while True:
        done, _ = read_records(out)
        todo = [m.id for m in mutants if m.id not in done]
        if not todo:
            break
        ids_file.write_text("\n".join(todo) + "\n")
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
        with open(log, "a") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "grader.mutation", "worker", lab, str(ids_file), str(out)],
                                    cwd=REPO, env=env, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
            last_size, last_change, reported = -1, time.monotonic(), len(done)
            while proc.poll() is None:
                time.sleep(2)
                size = out.stat().st_size if out.exists() else 0
                if size != last_size:
                    last_size, last_change = size, time.monotonic()
                    finished, _ = read_records(out)
                    if len(finished) - reported >= 25:
                        reported = len(finished)
                        progress(f"  {lab}: {reported}/{len(mutants)} mutants judged")
                elif time.monotonic() - last_change > STALL_S:
                    proc.kill()
                    proc.wait()
        done, started = read_records(out)
        if started is None:
            if proc.returncode != 0 and [m for m in mutants if m.id not in done]:
                raise RuntimeError(f"the mutation worker of {lab} failed before its first mutant (see {log})")
            continue
        m = by_id[started]
        how = "stopped answering" if proc.returncode in (-9,) else f"exited with status {proc.returncode}"
        with open(out, "a") as f:
            f.write(json.dumps({"id": m.id, "lab": m.lab, "task": m.task, "operator": m.operator, "change": m.change,
                                "status": "killed", "check": "(process)",
                                "message": f"the notebook's process {how} while the checks ran this mutant",
                                "seconds": None}) + "\n")
    done, _ = read_records(out)
    return [done[m.id] for m in mutants]


# ----------------------------------------------------------------------------- report

def summarise(records: list[dict], mutants: list[Mutant], equivalent: dict[str, str]) -> dict:
    """Counts per task and lab; `equivalent` ids that survive count as equivalent, not as survivors."""
    tasks: dict[str, dict] = {}
    for m in mutants:
        tasks.setdefault(m.task, {"generated": 0, "killed": 0, "survived": 0, "equivalent": 0})
    survivors, listed_killed = [], []
    for rec in records:
        t = tasks[rec["task"]]
        t["generated"] += 1
        if rec["status"] == "killed":
            t["killed"] += 1
            if rec["id"] in equivalent:
                listed_killed.append({"id": rec["id"], "change": rec["change"], "check": rec["check"],
                                      "message": rec["message"]})
        elif rec["id"] in equivalent:
            t["equivalent"] += 1
        else:
            t["survived"] += 1
            survivors.append({"id": rec["id"], "change": rec["change"]})
    for t in tasks.values():
        t["kill_rate"] = round(t["killed"] / max(1, t["generated"] - t["equivalent"]), 4)
    total = {k: sum(t[k] for t in tasks.values()) for k in ("generated", "killed", "survived", "equivalent")}
    total["kill_rate"] = round(total["killed"] / max(1, total["generated"] - total["equivalent"]), 4)
    return {**total, "tasks": tasks, "survivors": survivors, "listed_equivalent_but_killed": listed_killed}


def write_report(results: dict[str, dict], path: Path = OUT / "report.json") -> dict:
    """Merge the labs just run into the report (other labs' entries stay) and write it."""
    report = {"labs": {}}
    if path.exists():
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    report.setdefault("labs", {}).update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report


def table(labs: dict[str, dict]) -> str:
    rows = [f"{'lab':6s} {'task':30s} {'generated':>9s} {'killed':>7s} {'survived':>8s} {'equiv.':>7s} {'kill rate':>9s}",
            "-" * 82]
    for lab, s in sorted(labs.items()):
        for task, t in s["tasks"].items():
            rows.append(f"{lab:6s} {task:30s} {t['generated']:9d} {t['killed']:7d} {t['survived']:8d} "
                        f"{t['equivalent']:7d} {t['kill_rate']:9.1%}")
        rows.append(f"{lab:6s} {'(all)':30s} {s['generated']:9d} {s['killed']:7d} {s['survived']:8d} "
                    f"{s['equivalent']:7d} {s['kill_rate']:9.1%}   {s.get('seconds', 0):.0f} s")
        rows.append("")
    for lab, s in sorted(labs.items()):
        for v in s["survivors"]:
            rows.append(f"survived: {v['id']}   {v['change']}")
        for v in s["listed_equivalent_but_killed"]:
            rows.append(f"listed as equivalent but killed: {v['id']} by {v['check']}: {v['message'][:160]}")
    return "\n".join(rows)


def previous_records(lab: str, path: Path = OUT / "report.json") -> dict[str, dict]:
    """The records of the lab's last full run, by id (empty if none)."""
    try:
        lab_report = json.loads(path.read_text())["labs"][lab]
    except (OSError, KeyError, json.JSONDecodeError):
        return {}
    return {rec["id"]: rec for rec in lab_report.get("mutants", [])}


def run(labs: list[str], tasks: list[str] | None = None, resume: bool = False, per_task: int | None = None,
        survivors: bool = False) -> dict:
    """Judge the mutants of `labs` and merge the results into build/mutation/report.json.

    survivors: judge again only what survived in the last report (and mutants new since), except the
    survivors listed as equivalent; the records of the mutants killed then, and of those, are kept."""
    from grader.mutation import sample

    equivalent = equivalents()
    results = {}
    for lab in labs:
        start = time.perf_counter()
        mutants = generate(lab, tasks)
        if per_task:
            mutants = sample(mutants, per_task)
        kept = {}
        if survivors:
            kept = {i: r for i, r in previous_records(lab).items() if r["status"] == "killed" or i in equivalent}
        todo = [m for m in mutants if m.id not in kept]
        print(f"{lab}: {len(mutants)} mutants, {len(todo)} to judge", flush=True)
        records = {r["id"]: r for r in run_lab(lab, todo, resume=resume, progress=lambda s: print(s, flush=True))}
        records = [dict(records.get(m.id) or kept[m.id], change=m.change) for m in mutants]
        summary = summarise(records, mutants, equivalent)
        summary.update(seconds=round(time.perf_counter() - start, 1), date=time.strftime("%Y-%m-%d %H:%M"),
                       sample_per_task=per_task, tasks_run=tasks, survivors_only=survivors, mutants=records)
        results[lab] = summary
        write_report({lab: summary})
    return results


def refresh(path: Path = OUT / "report.json") -> dict:
    """Recount the last report with the current list of equivalent mutants (no check is run)."""
    report = json.loads(path.read_text())
    equivalent = equivalents()
    for lab, old in report["labs"].items():
        mutants = generate(lab, old.get("tasks_run"))
        if old.get("sample_per_task"):
            from grader.mutation import sample

            mutants = sample(mutants, old["sample_per_task"])
        by_id = {r["id"]: r for r in old["mutants"]}
        judged = [m for m in mutants if m.id in by_id]
        records = [dict(by_id[m.id], change=m.change) for m in judged]
        summary = summarise(records, judged, equivalent)
        keep = {k: old[k] for k in ("seconds", "date", "sample_per_task", "tasks_run", "survivors_only") if k in old}
        summary.update(keep, not_judged=len(mutants) - len(judged), mutants=records)
        report["labs"][lab] = summary
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report
