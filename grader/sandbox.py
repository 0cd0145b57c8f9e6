"""The grading sandbox: the notebook kernel runs where it can harm nothing and see nothing private.

bubblewrap (`bwrap`, Debian/Ubuntu package `bubblewrap`) builds a fresh root for each kernel:

* read-only: the system (/usr), Python and the course's virtual environment, the `xailab` package
  and its data — nothing else of the repository (no grader/, no solutions/), no gradebook, no other
  student's files, no home directory;
* writable but private and size-limited: /tmp, a home directory and the notebook's working directory
  (empty tmpfs: the submission itself reaches the kernel through nbgrader, cell by cell);
* the kernel's own runtime folder (its connection file and IPC sockets) and the checker's socket;
* no network (a new network namespace), its own PID namespace (every process it starts ends with it),
  an unprivileged user, no capabilities;
* limits (prlimit): memory (RLIMIT_DATA), processes and threads, CPU time, open files, file size;
* captum, zennit and lucent are masked: implementations must be the student's own.

nbgrader starts it through the kernelspec `xailab-sandbox` written by `install_kernelspec` into the
grading workspace (`python -m grader.sandbox CONNECTION_FILE [ipykernel arguments]`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

KERNEL_NAME = "xailab-sandbox"
SOCKET_ENV = "XAILAB_CHECKER_SOCKET"  # host path of the checker's socket for this submission
INSIDE_SOCKET = "/run/xailab/checker.sock"
MASKED = ("captum", "zennit", "lucent")  # packages a submission may not use

GIB = 1 << 30
LIMITS = {  # prlimit option: value (soft = hard)
    "data": 6 * GIB,  # heap and anonymous memory; torch + the course models need ~1.5 GiB
    "nproc": 256,  # processes and threads of the kernel's user
    "cpu": 1200,  # seconds of CPU time for the whole notebook
    "nofile": 1024,
    "fsize": 256 << 20,  # bytes per file written
    "core": 0,
}
TMPFS_BYTES = {"/tmp": 1 * GIB, "/home/sandbox": 256 << 20, "/dev/shm": 256 << 20}


def unavailable_reason() -> str | None:
    """None when a sandbox can be built here; otherwise why not (shown by the grading driver)."""
    if sys.platform != "linux":
        return f"the sandbox needs Linux namespaces (this is {sys.platform})"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--die-with-parent",
                            "--proc", "/proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"bubblewrap cannot create namespaces here ({probe.stderr.strip()[:200]})"
    return None


def install_kernelspec(jupyter_dir: Path) -> None:
    """Write the kernelspec nbgrader uses while grading (its folder goes on JUPYTER_PATH)."""
    folder = jupyter_dir / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "grader.sandbox", "{connection_file}"],
            "display_name": "Python 3 (grading sandbox)", "language": "python", "interrupt_mode": "message",
            "env": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0]).resolve()
    return Path(spec.origin).resolve().parent if spec.origin else None


def _parents(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if str(p) != "/"]


class _Builder:
    """Accumulates bwrap arguments; makes every bind's parent folders traversable (0755)."""

    def __init__(self):
        self.args: list[str] = []
        self.dirs: set[str] = set()
        self.fds: list[int] = []

    def dir(self, path: Path) -> None:
        for p in [*_parents(path), path]:
            if str(p) not in self.dirs:
                self.dirs.add(str(p))
                self.args += ["--perms", "0755", "--dir", str(p)]

    def bind(self, source: Path, dest: Path | None = None, writable: bool = False) -> None:
        dest = dest or source
        for p in _parents(dest):
            self.dir(p)
        self.args += ["--bind" if writable else "--ro-bind", str(source), str(dest)]

    def data(self, text: str, dest: str, perms: str = "0644") -> None:
        read, write = os.pipe()
        os.write(write, text.encode())
        os.close(write)
        os.set_inheritable(read, True)
        self.fds.append(read)
        self.args += ["--perms", perms, "--ro-bind-data", str(read), dest]

    def tmpfs(self, path: str, size: int, perms: str = "1777") -> None:
        for p in _parents(Path(path)):
            self.dir(p)
        self.args += ["--perms", perms, "--size", str(size), "--tmpfs", path]


def command(program: list[str], cwd: Path, uid: int | None, connection_file: Path | None = None,
            ) -> tuple[list[str], list[int]]:
    """The bwrap command line (and the file descriptors it reads) running `program` in the sandbox
    (for a kernel: with its connection file and IPC folder bound in)."""
    b = _Builder()
    b.args += ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent", "--hostname", "grading", "--clearenv"]
    if uid is None:  # an unprivileged instructor: a user namespace maps the kernel to their own user
        b.args += ["--unshare-user"]
    else:  # root: bwrap drops to an unprivileged user inside (setpriv below) and keeps no capabilities
        b.args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    b.bind(Path("/usr"))
    for link in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            b.args += ["--symlink", os.readlink(target), f"/{link}"]
        elif target.exists():
            b.bind(target)
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf", "/etc/fonts"):
        if Path(etc).exists():
            b.bind(Path(etc))
    b.args += ["--proc", "/proc", "--dev", "/dev"]
    b.tmpfs("/dev/shm", TMPFS_BYTES["/dev/shm"])
    b.tmpfs("/tmp", TMPFS_BYTES["/tmp"])
    b.tmpfs("/home/sandbox", TMPFS_BYTES["/home/sandbox"])
    b.tmpfs(str(cwd), 64 << 20)
    inside_uid = uid if uid is not None else os.getuid()
    b.data(f"root:x:0:0::/root:/bin/sh\nsandbox:x:{inside_uid}:{inside_uid}::/home/sandbox:/bin/sh\n", "/etc/passwd")
    b.data(f"root:x:0:\nsandbox:x:{inside_uid}:\n", "/etc/group")
    # Python, the virtual environment, and the student package with its data.
    for root in {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent}:
        b.bind(root)
    python_path = []  # the grader's own copy of the package first, whatever the venv's editable install says
    for package in ("xailab", "xailab_data"):
        folder = _package_dir(package)
        if folder is not None and not any(str(folder).startswith(str(Path(p).resolve()) + os.sep)
                                           for p in (sys.prefix, sys.base_prefix)):
            b.bind(folder)
            if folder.name == package:
                python_path.append(str(folder.parent))
    for package in MASKED:
        folder = _package_dir(package)
        if folder is not None:
            b.tmpfs(str(folder), 1 << 20, perms="0755")
            b.data(f"raise ImportError({package!r} + ' is not available while grading: implementations must be "
                   "your own')\n", str(folder / "__init__.py"))
    # The kernel's connection file (read-only), its IPC socket folder (this submission's own) and the
    # checker's socket.
    if connection_file is not None:
        b.bind(connection_file)
        ipc = _ipc_folder(connection_file)
        if ipc is not None:
            b.bind(ipc, writable=True)
    socket_path = os.environ.get(SOCKET_ENV)
    if socket_path and Path(socket_path).exists():
        b.bind(Path(socket_path), Path(INSIDE_SOCKET))
    env = {"HOME": "/home/sandbox", "TMPDIR": "/tmp", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "LANG": "C.UTF-8", "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp/matplotlib", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", "XAILAB_GRADING": "1",
           "TOKENIZERS_PARALLELISM": "false", "XAILAB_THREADS": os.environ.get("XAILAB_THREADS", "2"),
           "OMP_NUM_THREADS": os.environ.get("XAILAB_THREADS", "2")}
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(python_path)
    if socket_path:
        env["XAILAB_CHECKER"] = INSIDE_SOCKET
    for key, value in env.items():
        b.args += ["--setenv", key, value]
    b.args += ["--chdir", str(cwd)]
    kernel = ["prlimit", *(f"--{name}={value}" for name, value in LIMITS.items()), "--", *program]
    if uid is not None:
        kernel = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                  "--bounding-set=-all", "--no-new-privs", *kernel]
    return b.args + kernel, b.fds


def _ipc_folder(connection_file: Path) -> Path | None:
    info = json.loads(connection_file.read_text())
    return Path(info["ip"]).resolve().parent if info.get("transport") == "ipc" else None


def kernel_uid() -> int | None:
    """The user a root-run kernel becomes: one per concurrent kernel (process limits are per user)."""
    if os.geteuid() != 0:
        return None
    return 200_000 + os.getpid() % 100_000


def main(argv: list[str]) -> None:
    """Kernelspec entry point: replace this process by the sandboxed kernel."""
    connection_file = Path(argv[0]).resolve()
    uid = kernel_uid()
    if uid is not None:  # the kernel (another user) must read its connection file and create its sockets
        os.chown(connection_file, uid, uid)
        ipc = _ipc_folder(connection_file)
        if ipc is not None:
            os.chown(ipc, uid, uid)
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", str(connection_file), *argv[1:]]
    args, _ = command(kernel, Path.cwd().resolve(), uid, connection_file)
    os.execvp(args[0], args)


if __name__ == "__main__":
    main(sys.argv[1:])
