"""nbgrader's Execute step, hardened for grading untrusted notebooks (runs in the nbgrader process).

* A cell's time limit grows with the machine's load, and is never enforced while the trusted checker
  is running one of the cell's hidden checks (the checker has budgets of its own).
* A cell that ignores the interrupt, or a kernel that dies (os._exit, a crash, a memory limit), ends
  the execution cleanly: the cell gets an error naming what happened, the cells after it an error
  saying they were not run, and nbgrader goes on to save the grades — the run never crashes.
* Output is capped per cell and per notebook, so a flood of prints cannot bloat the feedback.
"""
from __future__ import annotations

import json
import os
import time

from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from traitlets import Bool, Integer, Unicode

from nbgrader.preprocessors import Execute

STOPPED = "KernelDied"  # ename of the cell during which the kernel died or hung
NOT_RUN = "NotRun"  # ename of the cells after it
TRUNCATED = "[output truncated by the grader: too much output]\n"


class KernelUnresponsive(Exception):
    pass


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class GuardedExecute(Execute):
    raise_on_iopub_timeout = Bool(False, help="a cell that floods its output keeps what arrived in time").tag(config=True)
    busy_file = Unicode("", help="file the checker writes while a hidden check runs ({'until': epoch s})").tag(config=True)
    timings_file = Unicode("", help="where to write the start time and each code cell's duration (JSON)").tag(config=True)
    max_cell_output = Integer(100_000, help="bytes of output kept per cell").tag(config=True)
    max_notebook_output = Integer(2_000_000, help="bytes of output kept per notebook").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._gone: str | None = None
        self._interrupted: set[int] = set()
        self._cell_bytes: dict[int, int] = {}
        self._total_bytes = 0
        self._timings = {"started": time.time(), "cells": []}
        try:
            return super().preprocess(nb, resources, km)
        finally:
            if self.timings_file:
                with open(self.timings_file, "w") as fh:
                    json.dump(self._timings, fh)

    # ------------------------------------------------------------------ time limits

    def _load_factor(self) -> float:
        try:
            return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        except OSError:
            return 1.0

    def _get_timeout(self, cell):
        timeout = super()._get_timeout(cell)
        return None if timeout is None else int(timeout * self._load_factor())

    def _checker_busy(self) -> bool:
        try:
            return time.time() < json.loads(open(self.busy_file).read())["until"]
        except (OSError, ValueError, KeyError, TypeError):
            return False

    async def _async_handle_timeout(self, timeout, cell=None):
        if self.busy_file and self._checker_busy():
            self.log.info("Cell over its time limit while a hidden check runs: waiting for the checker")
            return None
        key = id(cell)
        if key in self._interrupted:
            raise KernelUnresponsive()
        self._interrupted.add(key)
        self.log.error("Timeout waiting for execute reply (%is): interrupting the kernel", timeout)
        await self._async_interrupt()
        return None  # wait for the interrupted cell's reply (once more the time limit)

    async def _async_interrupt(self):
        from jupyter_client.utils import ensure_async

        await ensure_async(self.km.interrupt_kernel())

    # ------------------------------------------------------------------ dead or hung kernels

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if self._gone is not None:
            if cell.cell_type == "code" and cell.source.strip():
                cell.outputs = [_error(NOT_RUN, f"not run: {self._gone} in an earlier cell")]
            return cell
        started = time.time()
        self._timings.setdefault("first_cell", started)
        try:
            cell = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        except DeadKernelError:
            self._gone = "the notebook's kernel died (os._exit, a crash, or a resource limit)"
            cell.outputs = list(cell.get("outputs", [])) + [_error(STOPPED, self._gone + " while running this cell")]
        except CellTimeoutError as err:  # a safety net: nbclient's own time-outs end this cell only
            cell.outputs = list(cell.get("outputs", [])) + [_error("CellTimeout", str(err).splitlines()[0][:200])]
        except KernelUnresponsive:
            self._gone = "the notebook's kernel ignored the interrupt after the cell's time limit and was stopped"
            cell.outputs = list(cell.get("outputs", [])) + [_error(STOPPED, self._gone + " (this cell)")]
            await self._kill()
        if id(cell) in self._interrupted and self._gone is None:
            cell.outputs.append(_error("CellTimeout", "the cell ran past its time limit and was interrupted"))
        if cell.cell_type == "code" and cell.source.strip():
            meta = cell.get("metadata", {}).get("nbgrader", {})
            self._timings["cells"].append({"grade_id": meta.get("grade_id"), "solution": bool(meta.get("solution")),
                                           "seconds": round(time.time() - started, 3)})
        return cell

    execute_cell = run_sync(async_execute_cell)  # nbconvert calls the synchronous wrapper

    async def _kill(self):
        from jupyter_client.utils import ensure_async

        try:
            await ensure_async(self.km.shutdown_kernel(now=True))
        except Exception:  # noqa: BLE001 - already gone
            pass

    async def _async_cleanup_kernel(self):
        try:
            await super()._async_cleanup_kernel()
        except Exception:  # noqa: BLE001 - a killed kernel cannot be shut down twice
            pass

    # ------------------------------------------------------------------ output size

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] == "error":  # errors always count (they decide the cell)
            return super().output(outs, msg, display_id, cell_index)
        size = len(json.dumps(msg.get("content", {}), default=str))
        used = self._cell_bytes.get(cell_index, 0)
        if used + size > self.max_cell_output or self._total_bytes + size > self.max_notebook_output:
            if used < self.max_cell_output:
                outs.append(NotebookNode(output_type="stream", name="stdout", text=TRUNCATED))
            self._cell_bytes[cell_index] = self.max_cell_output  # nothing more from this cell
            return None
        self._cell_bytes[cell_index] = used + size
        self._total_bytes += size
        return super().output(outs, msg, display_id, cell_index)
