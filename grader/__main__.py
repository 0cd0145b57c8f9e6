"""`python -m grader grade [SUBMISSIONS]`: autograde and print the grade table; `python -m grader release`: make labs/."""
import argparse
from pathlib import Path

import sys

from grader.grade import REPO, SAMPLES, SandboxUnavailable, all_labs, grade, release, table

parser = argparse.ArgumentParser(prog="python -m grader")
sub = parser.add_subparsers(dest="cmd", required=True)
g = sub.add_parser("grade", help="autograde submissions and print the grade table")
g.add_argument("submissions", nargs="?", type=Path, default=SAMPLES,
               help="folder of <student>/<lab>/<notebook>.ipynb (default: the bundled samples)")
g.add_argument("--labs", nargs="*", help="labs to grade (default: every lab present)")
g.add_argument("--workspace", type=Path, default=REPO / "build" / "grading",
               help="scratch nbgrader course folder, wiped first (default: build/grading)")
g.add_argument("--no-sandbox", action="store_true",
               help="run notebooks without the OS sandbox (only where none can be built; the table says so)")
r = sub.add_parser("release", help="generate the student notebooks labs/ from solutions/")
r.add_argument("--out", type=Path, default=REPO / "labs")
r.add_argument("--labs", nargs="*")
args = parser.parse_args()
if args.cmd == "grade":
    try:
        rows = grade(args.submissions.resolve(), args.labs, args.workspace.resolve(), use_sandbox=not args.no_sandbox)
    except SandboxUnavailable as err:
        sys.exit(str(err))
    print(table(rows))
    print(f"\nfeedback: {args.workspace / 'feedback'}   grades: {args.workspace / 'grades.csv'}")
else:
    release(args.out, args.labs)
    print(f"released {', '.join(args.labs or all_labs())} into {args.out}")
