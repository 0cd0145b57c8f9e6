"""python -m grader.mutation run [--labs lab01 ...] [--tasks ...] [--sample N] [--resume] [--survivors]   (make mutation)
python -m grader.mutation list [--labs ...]       every mutant's id and change
python -m grader.mutation show ID                 the mutated function
python -m grader.mutation report                  recount build/mutation/report.json (current equivalent list)
"""
import argparse
import sys
from pathlib import Path

from grader.mutation import generate, notebooks

parser = argparse.ArgumentParser(prog="python -m grader.mutation")
sub = parser.add_subparsers(dest="cmd", required=True)
r = sub.add_parser("run", help="judge the mutants; write build/mutation/report.json and print the table")
r.add_argument("--labs", nargs="*", help="labs (default: all)")
r.add_argument("--tasks", nargs="*", help="only these tasks")
r.add_argument("--sample", type=int, default=None, help="only the fixed sample of N mutants per task")
r.add_argument("--resume", action="store_true", help="keep the records of an interrupted run")
r.add_argument("--survivors", action="store_true",
               help="judge again only the survivors of the last report that are not listed as equivalent "
                    "(and new mutants); keep the other records")
ls = sub.add_parser("list", help="print every mutant's id and change")
ls.add_argument("--labs", nargs="*")
sh = sub.add_parser("show", help="print a mutant's function")
sh.add_argument("id")
sub.add_parser("report", help="recount the last report with the current equivalent list and print its table")
w = sub.add_parser("worker")
w.add_argument("lab")
w.add_argument("ids_file", type=Path)
w.add_argument("out", type=Path)
args = parser.parse_args()

if args.cmd == "worker":
    from grader.mutation.runner import worker

    worker(args.lab, args.ids_file, args.out)
elif args.cmd == "run":
    from grader.mutation.runner import run, table

    labs = args.labs or list(notebooks())
    results = run(labs, args.tasks, args.resume, args.sample, args.survivors)
    print(table(results))
    print("\nreport: build/mutation/report.json")
elif args.cmd == "list":
    for lab in args.labs or list(notebooks()):
        for m in generate(lab):
            print(f"{m.id}   {m.change}")
elif args.cmd == "show":
    lab, task = args.id.split(".")[:2]
    found = [m for m in generate(lab, [task]) if m.id == args.id]
    if not found:
        sys.exit(f"no mutant {args.id} (the solution changed since, or a typo)")
    import ast
    import difflib

    from grader.mutation import notebook

    m = found[0]
    original = ast.unparse(notebook(lab).regions[task].func).splitlines()
    print(f"# {m.id}\n# {m.change}")
    print("\n".join(difflib.unified_diff(original, m.source.splitlines(), "solution", "mutant", lineterm="", n=2)))
else:
    from grader.mutation.runner import refresh, table

    print(table(refresh()["labs"]))
