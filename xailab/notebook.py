"""The `%%experiment` cell magic: run the cell normally, skip it while the autograder grades.

Experiments (plots, sweeps) teach but earn no points; skipping them keeps grading to seconds.
The cell behaves like an ordinary one: its last expression is shown unless the cell ends with `;`,
and an error stops "Run all" (its traceback is shown once, by the cell that raised).
"""
import io
import tokenize

from xailab.utils import grading_mode


class ExperimentFailed(Exception):
    """The experiment raised; its traceback is already on screen."""

    def _render_traceback_(self):  # IPython shows this instead of a second traceback
        return ["(the experiment stopped at the error above)"]


def ends_with_semicolon(cell: str) -> bool:
    """True when the cell's last statement ends with `;` (IPython then shows no result)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(cell).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = {tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
    last = next((t for t in reversed(tokens) if t.type not in skip), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


def experiment(line, cell):
    if grading_mode():
        print("(experiment skipped while grading)")
        return
    from IPython import get_ipython

    shell = get_ipython()
    hook = shell.displayhook
    # IPython decides "quiet" from the last line of the *outer* cell in the history (the magic call),
    # so a `;` at the end of the experiment would be ignored and a returned figure drawn twice.
    quiet = ends_with_semicolon(cell)
    hook.quiet = lambda: quiet
    try:
        result = shell.run_cell(cell)
    finally:
        del hook.quiet
    if not result.success:
        raise ExperimentFailed()


def register() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.register_magic_function(experiment, "cell", "experiment")
