"""`python -m xailab.zoo list` | `python -m xailab.zoo build [NAME ...]`."""
import argparse

from xailab.utils import seed_everything
from xailab.zoo import build, list_models

parser = argparse.ArgumentParser(prog="python -m xailab.zoo", description=__doc__)
sub = parser.add_subparsers(dest="cmd", required=True)
sub.add_parser("list", help="list the models")
b = sub.add_parser("build", help="retrain checkpoints deterministically")
b.add_argument("names", nargs="*")
args = parser.parse_args()
if args.cmd == "list":
    for name, summary in list_models().items():
        print(f"{name:24s} {summary}")
else:
    seed_everything(0, threads=2)
    build(args.names or None)
