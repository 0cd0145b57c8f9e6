"""`python -m grader grade [SUBMISSIONS]`: autograde and print the grade table; `python -m grader release`: make labs/."""
import argparse
import sys
from pathlib import Path

from grader.grade import REPO, SAMPLES, SandboxUnavailable, UsageError, all_labs, grade, release, table

parser = argparse.ArgumentParser(prog="python -m grader")
sub = parser.add_subparsers(dest="cmd", required=True)
g = sub.add_parser("grade", help="autograde submissions and print the grade table")
g.add_argument("submissions", nargs="?", type=Path, default=SAMPLES,
               help="folder of <student>/<lab>/<notebook>.ipynb, or student folders/zips (default: the bundled samples)")
g.add_argument("--labs", nargs="*", help="labs to grade (default: every lab present)")
g.add_argument("--workspace", type=Path, default=REPO / "build" / "grading",
               help="scratch nbgrader course folder, wiped first unless --resume (default: build/grading)")
g.add_argument("--jobs", type=int, default=1, help="grade N submissions at a time on this machine (Dask workers)")
g.add_argument("--scheduler", help="grade on a Dask cluster: its scheduler address, e.g. tcp://10.0.0.5:8786")
g.add_argument("--resume", action="store_true", help="keep the workspace and grade only what an interrupted run missed")
g.add_argument("--no-sandbox", action="store_true",
               help="run notebooks without the OS sandbox (only where none can be built; the table says so)")
g.add_argument("--quiet", action="store_true", help="no progress bar")
r = sub.add_parser("release", help="generate the student notebooks labs/ from solutions/")
r.add_argument("--out", type=Path, default=REPO / "labs")
r.add_argument("--labs", nargs="*")
args = parser.parse_args()
if args.cmd == "grade":
    try:
        rows = grade(args.submissions.resolve(), args.labs, args.workspace.resolve(), use_sandbox=not args.no_sandbox,
                     jobs=args.jobs, scheduler=args.scheduler, resume=args.resume, progress=not args.quiet)
    except (SandboxUnavailable, UsageError) as err:
        sys.exit(str(err))
    print(table(rows))
    print(f"\nfeedback: {args.workspace / 'feedback'}   grades: {args.workspace / 'grades.csv'}")
    print(rows.report)
else:
    unknown = [lab for lab in args.labs or [] if lab not in all_labs()]
    if unknown:
        sys.exit(f"unknown lab {', '.join(map(repr, unknown))}: the labs are {', '.join(all_labs())}")
    release(args.out, args.labs)
    print(f"released {', '.join(args.labs or all_labs())} into {args.out}")
