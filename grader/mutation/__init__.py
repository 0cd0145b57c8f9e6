"""Mutation testing of the hidden checks: small automatic changes of every solution region.

Each task function of a solution notebook (a function with checks ``labNN.<task>.*``) is parsed
and changed in one place at a time — an operator or comparison swapped, a call or an operand
dropped, a reduction or a dimension changed, a constant changed, a statement deleted, arguments
swapped, a ``with torch.no_grad()`` / ``try`` unwrapped, … (the operators are listed in
`OPERATORS`). Each change (a *mutant*) is built the way a student's notebook would define it: the
notebook's imports and helper definitions and every solution cell run in a fresh namespace, then
the changed function. `grader.mutation.runner` runs every check of the task on it: a mutant is
*killed* when a check fails, and a survivor is either a gap in the checks or *equivalent* — it
behaves like the solution on every input a correct test could use. Equivalent mutants are listed
with a one-line reason in grader/mutants/equivalent.toml (reviewed by hand).

Mutant ids are ``lab.task.operator.L<line>.<hash>``: the line counts from the first statement of the
solution body (docstring edits do not move it) and the hash is that of the changed code before and
after, so an id names the same change as long as that part of the solution is unchanged.

Not generated, because no test on the course's CPU-only machines can tell them apart: dropping a
``device=`` argument or a ``.to(<tensor>.device)`` call.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[2]
EQUIVALENT_FILE = REPO / "grader" / "mutants" / "equivalent.toml"
NOTEBOOK_NAME = "__notebook__"  # __name__ of the namespace a mutant is defined in


# ----------------------------------------------------------------------------- notebooks and tasks

def notebooks() -> dict[str, Path]:
    """{lab: solution notebook} for every lab, e.g. {"lab01": solutions/lab01-saliency/lab01.ipynb}."""
    found = {}
    for path in sorted((REPO / "solutions").glob("lab*-*/lab*.ipynb")):
        if (re.fullmatch(r"lab\d\d", path.stem) and path.parent.name.startswith(path.stem + "-")
                and (REPO / "grader" / "checks" / f"{path.stem}.py").exists()):
            found[path.stem] = path
    return found


def task_names(lab: str) -> set[str]:
    from grader.checks import checks_for

    return {c.task for c in checks_for(lab)}


def _source(cell) -> str:
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def _is_definition(stmt: ast.stmt) -> bool:
    """Imports, functions, classes and assignments of literal constants (STABILIZER = 1e-9)."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
        return True
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
        try:
            ast.literal_eval(stmt.value)
        except ValueError:
            return False
        return True
    return False


def _definitions(stmt: ast.stmt) -> list[ast.stmt]:
    """The definitions of a top-level statement: itself, or the imports inside a try / if / with."""
    if _is_definition(stmt):
        return [stmt]
    if isinstance(stmt, (ast.Try, ast.If, ast.With)):
        return [s for s in ast.walk(stmt) if isinstance(s, (ast.Import, ast.ImportFrom))]
    return []


@dataclass
class Region:
    """One task function of a solution cell."""

    lab: str
    task: str
    cell: int  # index of the solution cell in the notebook
    func: ast.FunctionDef

    @property
    def body_start(self) -> int:
        """Index of the first statement after the docstring."""
        body = self.func.body
        return 1 if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str) else 0

    @property
    def first_line(self) -> int:
        return self.func.body[self.body_start].lineno


@dataclass
class Notebook:
    """A solution notebook as definitions: what a student's namespace holds when a hidden test runs."""

    lab: str
    path: Path
    blocks: list[tuple[int, str]] = field(default_factory=list)  # (cell index, source) in notebook order
    regions: dict[str, Region] = field(default_factory=dict)  # task -> region

    @classmethod
    def load(cls, lab: str, path: Path | None = None) -> "Notebook":
        import nbformat

        path = path or notebooks()[lab]
        nb = nbformat.read(str(path), as_version=4)
        tasks = task_names(lab)
        self = cls(lab, path)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            meta = cell.get("metadata", {}).get("nbgrader", {})
            src = _source(cell)
            if meta.get("solution"):
                tree = ast.parse(src)
                self.blocks.append((index, src))
                for stmt in tree.body:
                    if isinstance(stmt, ast.FunctionDef) and stmt.name in tasks:
                        self.regions[stmt.name] = Region(lab, stmt.name, index, stmt)
            elif not meta.get("grade") and not src.lstrip().startswith("%"):
                try:
                    tree = ast.parse(src)
                except SyntaxError:
                    continue
                defs = [d for s in tree.body for d in _definitions(s)]
                if defs:
                    self.blocks.append((index, ast.unparse(ast.Module(body=defs, type_ignores=[]))))
        missing = tasks - set(self.regions)
        if missing:
            raise ValueError(f"{path}: no solution cell defines {sorted(missing)}")
        return self

    @property
    def code(self) -> list:
        if not hasattr(self, "_code"):
            self._code = [compile(src, f"<{self.lab} cell {i}>", "exec") for i, src in self.blocks]
        return self._code

    def namespace(self, task: str | None = None, source: str | None = None) -> dict:
        """A fresh namespace with every definition of the notebook; `source` (a new definition of
        `task`) runs last, as if the student had written it in the task's cell."""
        ns: dict = {"__name__": NOTEBOOK_NAME, "__builtins__": __builtins__}
        for code in self.code:
            exec(code, ns)  # noqa: S102 - the course's own solution notebooks
        if source is not None:
            exec(compile(source, f"<{self.lab}.{task} mutant>", "exec"), ns)  # noqa: S102
        return ns


# ----------------------------------------------------------------------------- mutants

@dataclass(frozen=True)
class Mutant:
    id: str
    lab: str
    task: str
    operator: str
    line: int  # 1 = the first line of the solution body
    before: str  # the changed code, before and after (one line each, shortened)
    after: str
    source: str  # the whole mutated function

    @property
    def change(self) -> str:
        return f"L{self.line}: {self.before} → {self.after}"

    def build(self, notebook: Notebook) -> Callable:
        return notebook.namespace(self.task, self.source)[self.task]


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _paths(node: ast.AST, path: tuple = ()) -> Iterator[tuple[tuple, ast.AST]]:
    for name, value in ast.iter_fields(node):
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ast.AST):
                    yield path + ((name, i),), item
                    yield from _paths(item, path + ((name, i),))
        elif isinstance(value, ast.AST):
            yield path + ((name, None),), value
            yield from _paths(value, path + ((name, None),))


def _get(root: ast.AST, path: tuple) -> ast.AST:
    node = root
    for name, index in path:
        value = getattr(node, name)
        node = value[index] if index is not None else value
    return node


def _replace(root: ast.AST, path: tuple, new) -> ast.AST:
    """A copy of `root` with the node at `path` replaced by `new` (a node, or a list of statements)."""
    root = copy.deepcopy(root)
    parent = root
    for name, index in path[:-1]:
        value = getattr(parent, name)
        parent = value[index] if index is not None else value
    name, index = path[-1]
    if index is None:
        setattr(parent, name, new)
    else:
        items = getattr(parent, name)
        items[index:index + 1] = new if isinstance(new, list) else [new]
        if not items:
            items.append(ast.Pass())
    return root


# --- the operators: each maps (node, context) to replacements

ARITH = {ast.Add: [ast.Sub], ast.Sub: [ast.Add], ast.Mult: [ast.Div], ast.Div: [ast.Mult, ast.FloorDiv],
         ast.FloorDiv: [ast.Div, ast.Mult], ast.Mod: [ast.FloorDiv], ast.Pow: [ast.Mult], ast.MatMult: [ast.Mult],
         ast.BitOr: [ast.BitAnd], ast.BitAnd: [ast.BitOr]}
COMPARE = {ast.Lt: [ast.LtE, ast.Gt], ast.LtE: [ast.Lt, ast.GtE], ast.Gt: [ast.GtE, ast.Lt], ast.GtE: [ast.Gt, ast.LtE],
           ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.In: [ast.NotIn], ast.NotIn: [ast.In], ast.Is: [ast.IsNot],
           ast.IsNot: [ast.Is]}
RENAME = {"sum": ["mean"], "mean": ["sum"], "max": ["min"], "min": ["max"], "amax": ["amin"], "amin": ["amax"],
          "argmax": ["argmin"], "argmin": ["argmax"], "prod": ["sum"], "norm": ["sum"], "any": ["all"], "all": ["any"],
          "exp": ["log"], "log": ["exp"], "softmax": ["log_softmax"], "log_softmax": ["softmax"],
          "clamp_min": ["clamp_max"], "clamp_max": ["clamp_min"], "ceil": ["floor"], "floor": ["ceil"],
          "unsqueeze": ["squeeze"], "repeat": ["repeat_interleave"], "repeat_interleave": ["repeat"],
          "zeros_like": ["ones_like"], "ones_like": ["zeros_like"], "zeros": ["ones"], "ones": ["zeros"]}
REDUCTIONS = {"sum", "mean", "max", "min", "amax", "amin", "norm", "argmax", "argmin", "prod", "std", "var", "logsumexp"}
DIM_CALLS = REDUCTIONS | {"softmax", "log_softmax", "cat", "stack", "gather", "flatten", "unsqueeze", "squeeze",
                          "cumsum", "scatter", "index_select"}
KW_SWAP = {"min": "max", "max": "min"}


@dataclass
class Context:
    parents: dict[int, ast.AST]  # id(node) -> parent
    modules: set[str]  # names that are modules in the notebook (torch, F, nn, math)

    def parent(self, node):
        return self.parents.get(id(node))

    def inside(self, node, kinds) -> bool:
        p = self.parent(node)
        while p is not None:
            if isinstance(p, kinds):
                return True
            p = self.parent(p)
        return False


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _is_device(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "device"


def op_arith(node, ctx):
    if isinstance(node, (ast.BinOp, ast.AugAssign)):
        for new_op in ARITH.get(type(node.op), []):
            new = copy.copy(node)
            new.op = new_op()
            yield new
    if isinstance(node, ast.AugAssign):  # x += y → x = y
        yield ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)


def op_operand(node, ctx):
    if isinstance(node, ast.BinOp):
        yield node.left
        yield node.right
    elif isinstance(node, ast.BoolOp):
        yield from node.values
    elif isinstance(node, ast.IfExp):
        yield node.body
        yield node.orelse


def op_compare(node, ctx):
    if isinstance(node, ast.Compare):
        for i, o in enumerate(node.ops):
            for new_op in COMPARE.get(type(o), []):
                new = copy.copy(node)
                new.ops = list(node.ops)
                new.ops[i] = new_op()
                yield new
    elif isinstance(node, ast.BoolOp):
        new = copy.copy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield new


def op_unary(node, ctx):
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not, ast.Invert, ast.UAdd)):
        yield node.operand


def op_condition(node, ctx):
    """The condition of an if / while negated."""
    if isinstance(node, (ast.If, ast.While)):
        new = copy.copy(node)
        new.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
        yield new


def op_constant(node, ctx):
    if not isinstance(node, ast.Constant) or ctx.inside(node, (ast.JoinedStr, ast.Raise)):
        return
    v = node.value
    if isinstance(v, bool):
        yield ast.Constant(value=not v)
    elif isinstance(v, (int, float)):
        negated = isinstance(ctx.parent(node), ast.UnaryOp) and isinstance(ctx.parent(node).op, ast.USub)
        seen = {v}
        for new in (v + 1, v - 1, 0 * v, -v):
            if new in seen or (negated and new == -v):
                continue
            seen.add(new)
            yield ast.Constant(value=new)
    elif isinstance(v, str) and not isinstance(ctx.parent(node), ast.Expr):
        yield ast.Constant(value="")


def op_dim(node, ctx):
    """Reductions over other dimensions: a dim tuple loses an element; keepdim added or flipped."""
    if not isinstance(node, ast.Call) or _call_name(node) not in DIM_CALLS:
        return
    dims = [kw.value for kw in node.keywords if kw.arg == "dim"]
    if not dims and node.args and isinstance(node.args[0], ast.Tuple) and isinstance(node.func, ast.Attribute):
        dims = [node.args[0]]
    for d in dims:
        if isinstance(d, ast.Tuple) and len(d.elts) > 1:
            for i in range(len(d.elts)):
                new = copy.deepcopy(node)
                tup = [kw.value for kw in new.keywords if kw.arg == "dim"] or [new.args[0]]
                tup[0].elts = [e for j, e in enumerate(tup[0].elts) if j != i]
                yield new
    if _call_name(node) in REDUCTIONS and (node.args or any(kw.arg == "dim" for kw in node.keywords)):
        keep = [kw for kw in node.keywords if kw.arg == "keepdim"]
        new = copy.deepcopy(node)
        if keep:
            kw = [k for k in new.keywords if k.arg == "keepdim"][0]
            kw.value = ast.UnaryOp(op=ast.Not(), operand=kw.value)
        else:
            new.keywords = new.keywords + [ast.keyword(arg="keepdim", value=ast.Constant(value=True))]
        yield new


def op_rename(node, ctx):
    """sum ↔ mean, max ↔ min, argmax ↔ argmin, zeros ↔ ones, clamp(min=) ↔ clamp(max=), …"""
    if not isinstance(node, ast.Call):
        return
    f = node.func
    name = _call_name(node)
    for new_name in RENAME.get(name, []):
        new = copy.deepcopy(node)
        if isinstance(f, ast.Attribute):
            new.func.attr = new_name
        else:
            new.func.id = new_name
        yield new
    for i, kw in enumerate(node.keywords):
        if kw.arg in KW_SWAP and name in ("clamp", "clip", "clamp_"):
            new = copy.deepcopy(node)
            new.keywords[i].arg = KW_SWAP[kw.arg]
            yield new


def op_drop_call(node, ctx):
    """A call replaced by its receiver (x.detach() → x) or by one of its positional arguments."""
    if not isinstance(node, ast.Call):
        return
    f = node.func
    root = f
    while isinstance(root, ast.Attribute):
        root = root.value
    if isinstance(f, ast.Attribute) and not (isinstance(root, ast.Name) and root.id in ctx.modules):
        if not (f.attr == "to" and any(_is_device(a) for a in node.args + [k.value for k in node.keywords])):
            yield f.value
    else:
        for a in node.args[:3]:
            if not isinstance(a, ast.Starred):
                yield a


def op_drop_arg(node, ctx):
    """A keyword argument dropped (generator=, dtype=, attention_mask=, …); positional arguments swapped."""
    if not isinstance(node, ast.Call):
        return
    for i, kw in enumerate(node.keywords):
        if kw.arg is None or kw.arg == "device":
            continue
        new = copy.copy(node)
        new.keywords = node.keywords[:i] + node.keywords[i + 1:]
        yield new
    for i in range(len(node.args) - 1):
        a, b = node.args[i], node.args[i + 1]
        if isinstance(a, ast.Starred) or isinstance(b, ast.Starred) or ast.dump(a) == ast.dump(b):
            continue
        new = copy.copy(node)
        new.args = list(node.args)
        new.args[i], new.args[i + 1] = b, a
        yield new


def op_subscript(node, ctx):
    """An index or slice bound dropped: a[i:j] → a[i:], a[:j]; a[k] → a."""
    if isinstance(node, ast.Slice):
        for part in ("lower", "upper", "step"):
            if getattr(node, part) is not None:
                new = copy.copy(node)
                setattr(new, part, None)
                yield new
    elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        yield node.value


def op_delete(node, ctx):
    """A statement deleted (or an if reduced to one branch)."""
    if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.While, ast.Raise,
                         ast.Assert)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return
        yield []
    elif isinstance(node, ast.If):
        yield []
        yield list(node.body)
        if node.orelse:
            yield list(node.orelse)


def op_unwrap(node, ctx):
    """with torch.no_grad() / enable_grad() removed; try/finally removed (with or without the finally)."""
    if isinstance(node, ast.With):
        yield list(node.body)
    elif isinstance(node, ast.Try):
        yield list(node.body)
        if node.finalbody:
            yield list(node.body) + list(node.finalbody)


OPERATORS: dict[str, Callable] = {
    "arith": op_arith, "operand": op_operand, "compare": op_compare, "unary": op_unary, "condition": op_condition,
    "constant": op_constant,
    "dim": op_dim, "rename": op_rename, "drop_call": op_drop_call, "drop_arg": op_drop_arg,
    "subscript": op_subscript, "delete": op_delete, "unwrap": op_unwrap,
}


def _label(new) -> str:
    if isinstance(new, list):
        return "; ".join(ast.unparse(s).splitlines()[0] for s in new) if new else "pass"
    return ast.unparse(new)


def mutants_of(region: Region, modules: set[str]) -> list[Mutant]:
    """Every mutant of one task function, deduplicated, in a fixed order."""
    func = copy.deepcopy(region.func)
    func.body = func.body[region.body_start:] or [ast.Pass()]
    first_line = region.first_line
    original = ast.unparse(func)
    parents = {id(child): parent for parent in ast.walk(func) for child in ast.iter_child_nodes(parent)}
    ctx = Context(parents, modules)
    sigs = {original}
    out: list[Mutant] = []
    ids: set[str] = set()
    for path, node in _paths(func):
        if path[0][0] != "body" or isinstance(node, (ast.expr_context, ast.operator, ast.cmpop, ast.unaryop,
                                                     ast.boolop, ast.arguments, ast.arg, ast.keyword)):
            continue
        line = getattr(node, "lineno", None)
        for op_name, op in OPERATORS.items():
            for new in op(node, ctx):
                mutated = _replace(func, path, new)
                try:
                    src = ast.unparse(ast.fix_missing_locations(mutated))
                    compile(src, "<mutant>", "exec")
                except (SyntaxError, ValueError, TypeError, RecursionError):
                    continue
                if src in sigs:
                    continue
                sigs.add(src)
                before, after = ast.unparse(node), _label(new)
                shown, cut = node, len(path)  # small changes are shown with their enclosing expression
                while (isinstance(shown, (ast.Constant, ast.Slice, ast.UnaryOp, ast.Tuple, ast.Name, ast.keyword))
                       and isinstance(ctx.parent(shown), (ast.expr, ast.keyword, ast.slice))):
                    shown, cut = ctx.parent(shown), cut - 1
                if shown is not node:
                    label = (ast.unparse(shown), ast.unparse(_get(mutated, path[:cut])))
                else:
                    label = (before, after)
                rel = (line - first_line + 1) if line else 0
                digest = hashlib.sha1(f"{op_name}\0{before}\0{after}".encode()).hexdigest()[:6]
                mid = f"{region.lab}.{region.task}.{op_name}.L{rel}.{digest}"
                k = 2
                while mid in ids:
                    mid = f"{region.lab}.{region.task}.{op_name}.L{rel}.{digest}-{k}"
                    k += 1
                ids.add(mid)
                out.append(Mutant(mid, region.lab, region.task, op_name, rel, _short(label[0]), _short(label[1]),
                                  _with_docstring(region.func, src)))
    return out


def _with_docstring(original: ast.FunctionDef, src: str) -> str:
    """The mutated function with the original signature line and docstring (as a student would have it)."""
    tree = ast.parse(src).body[0]
    tree.body = list(original.body[:1] if original.body and isinstance(original.body[0], ast.Expr)
                     and isinstance(original.body[0].value, ast.Constant) else []) + tree.body
    return ast.unparse(tree)


@lru_cache(maxsize=None)
def notebook(lab: str) -> Notebook:
    return Notebook.load(lab)


@lru_cache(maxsize=None)
def _modules(lab: str) -> frozenset[str]:
    """The names that are modules in the notebook's namespace (torch, F, nn, math)."""
    return frozenset(k for k, v in notebook(lab).namespace().items() if type(v).__name__ == "module")


def generate(lab: str, tasks: list[str] | None = None) -> list[Mutant]:
    """All mutants of a lab (optionally of some tasks), in notebook order."""
    nb = notebook(lab)
    modules = set(_modules(lab))
    out = []
    for task, region in sorted(nb.regions.items(), key=lambda kv: (kv[1].cell, kv[1].func.lineno)):
        if tasks is None or task in tasks:
            out.extend(mutants_of(region, modules))
    return out


def sample(mutants: list[Mutant], per_task: int) -> list[Mutant]:
    """A fixed sample: the `per_task` mutants of each task whose ids hash lowest."""
    by_task: dict[tuple[str, str], list[Mutant]] = {}
    for m in mutants:
        by_task.setdefault((m.lab, m.task), []).append(m)
    chosen = []
    for key in sorted(by_task):
        ranked = sorted(by_task[key], key=lambda m: hashlib.sha1(m.id.encode()).hexdigest())
        chosen.extend(ranked[:per_task])
    return chosen


def reviewed_labs(path: Path = EQUIVALENT_FILE) -> list[str]:
    """The labs whose survivors were reviewed: those with a table in equivalent.toml (even an empty one).
    The test suite's fixed sample covers these labs only, so a new lab joins it once its sweep is done."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return sorted(lab for lab in data if lab in notebooks())


def equivalents(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """{mutant id: why it cannot be told apart from the solution} from the reviewed file."""
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        data = tomllib.load(f)
    out = {}
    for lab, entries in data.items():
        for mid, reason in entries.items():
            out[mid if mid.startswith(lab + ".") else f"{lab}.{mid}"] = reason
    return out
