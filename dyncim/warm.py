"""A warm Python for a local pipeline run: one process that has imported torch and the package
forks a child for each step the pipeline runs, instead of each step starting a fresh Python.

Why: on a CPU, a training job of the embedded default is a few seconds of work, but a fresh
Python spends more CPU than that importing torch, TensorBoard and torch._dynamo (which
torch.optim imports at its first step): 8-10 s of CPU per job on this project's 2-core test
machine, about a third of the default run. A child forked from a process that has already
imported them starts in milliseconds, and runs the same code on the same inputs: its outputs
are identical to a fresh process's (tests/test_warm.py).

How: `python -m dyncim.warm --socket PATH --parent PID` (started by the Snakefile's `onstart`
for local runs; see `start`) imports the heavy modules, then listens on a Unix socket in a
private (0700) temporary folder, whose path it gives the jobs as $DYNCIM_WARM. `python -m dyncim
<step>` (dyncim/__main__.py) first offers its command line, working folder, environment and
its stdin/stdout/stderr (passed as file descriptors, so `> {log} 2>&1` works as before) to the
worker (`delegate`). The worker forks; the child takes over the descriptors, folder and
environment and runs the step; the client waits and exits with the child's status, and passes
on SIGINT/SIGTERM/SIGHUP to it (so Snakemake's job kill still reaches the step). A client killed
outright closes its connection, and the worker then kills the child.

The client falls back to running the step itself, silently, whenever the worker cannot serve
it exactly as a fresh process would: no $DYNCIM_WARM, no worker (yet) at that path (the first
jobs of a run start while it is still importing), a different Python executable, working
folder or import path, a different value of any environment variable read at import time by
torch or its libraries, or a step that starts its own process pools (media, extract). The
worker never touches CUDA (a forked CUDA context is unusable): it refuses to start if its
imports initialised it, or if they started a Python thread.

It exits when the Snakemake process that started it has gone (killing any step still running),
or after `idle` seconds without a step. Code edited during a run is not seen by the worker's
later steps (it imported the package once); Snakemake reruns those steps next time anyway,
since the code files are their inputs.

This module's top level imports only the standard library: the client runs in every step.
"""
from __future__ import annotations

import argparse
import array
import json
import os
import selectors
import signal
import socket
import struct
import sys
import tempfile
import time

ENV = "DYNCIM_WARM"
# steps a child can run: in-process work only (media and extract start process pools of their own)
COMMANDS = frozenset({"split", "feature-file", "train", "evaluate", "robustness", "report", "figures",
                      "report-md"})
# what the worker imports before serving: everything the steps above spend start-up time on
PRELOAD = ("torch", "torch._dynamo", "torch.optim", "torch.utils.tensorboard", "numpy", "yaml",
           "jsonschema", "dyncim.cli", "dyncim.config", "dyncim.train.job", "dyncim.evaluation.evaluate",
           "dyncim.evaluation.robustness", "dyncim.report.summary", "dyncim.report.figures", "dyncim.report.markdown",
           "dyncim.methods.catalog")
# environment variables read when those modules are imported (thread pools, allocators, CPU
# dispatch, import paths): a client whose values differ runs the step itself
IMPORT_TIME_ENV = ("OMP_", "MKL_", "KMP_", "OPENBLAS_", "GOMP_", "TORCH", "PYTORCH_", "ATEN_",
                   "CUDA_", "NVIDIA_", "LD_", "PYTHON", "MPLBACKEND", "TF_", "DNNL_", "ONEDNN_")
_HEADER = struct.Struct("!I")
_MAX_FDS = 3


def _import_env(env) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


def _identity() -> dict:
    """What must match between the worker and a client for a forked child to be the same step."""
    import dyncim
    return {"executable": sys.executable, "package": list(dyncim.__path__), "path": sys.path[1:],
            "env": _import_env(os.environ)}


# ---- messages: a 4-byte length, then JSON; file descriptors ride on the first chunk -----------

def _send(sock: socket.socket, obj, fds=()) -> None:
    data = json.dumps(obj).encode()
    msg = _HEADER.pack(len(data)) + data
    sent = 0
    if fds:   # the descriptors ride on the first chunk; a stream socket may take part of it
        sent = sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    sock.sendall(msg[sent:])


def _recv(sock: socket.socket) -> tuple[object, list[int]]:
    """One message and the descriptors that came with it; (None, []) at end of stream."""
    buf, fds = b"", []
    need = _HEADER.size
    while len(buf) < need:
        data, anc, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(payload[:len(payload) - len(payload) % a.itemsize])
                fds.extend(a)
        if not data:
            for fd in fds:
                os.close(fd)
            return None, []
        buf += data
        if len(buf) >= _HEADER.size:
            need = _HEADER.size + _HEADER.unpack_from(buf)[0]
    return json.loads(buf[_HEADER.size:need]), fds


# ---- client ------------------------------------------------------------------------------------

def delegate(argv: list[str]) -> int | None:
    """Run `python -m dyncim <argv>` in the warm worker named by $DYNCIM_WARM; its exit status,
    or None where the caller must run the step itself."""
    path = os.environ.get(ENV)
    if not path or not argv or argv[0] not in COMMANDS:
        return None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError:
        return None
    with sock:
        try:
            _send(sock, {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ), **_identity()},
                  fds=(0, 1, 2))
            reply, _ = _recv(sock)
        except OSError:
            return None
        if not isinstance(reply, dict) or "pid" not in reply:
            return None   # refused (the reason is in the worker's log): run it here
        pid = reply["pid"]

        def forward(sig, _frame):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        while True:
            try:
                reply, _ = _recv(sock)
                break
            except InterruptedError:
                continue
    if not isinstance(reply, dict) or "status" not in reply:
        print(f"dyncim: the warm worker at {path} went away while running {argv[0]} (pid {pid})",
              file=sys.stderr)
        return 1
    status = reply["status"]
    if os.WIFSIGNALED(status):   # die as the child did, so the shell sees the same signal
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.waitstatus_to_exitcode(status)


# ---- worker ------------------------------------------------------------------------------------

def _preload(modules, log) -> None:
    import importlib
    import threading
    t = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        raise RuntimeError("importing the steps' modules initialised CUDA: a forked child could not use it")
    # Python threads could hold locks a child would inherit locked. (torch's import starts native
    # threads; torch makes itself fork-safe for them, as DataLoader's forked workers rely on.)
    if threading.active_count() != 1:
        raise RuntimeError("importing the steps' modules started Python threads: forking would not be safe")
    log(f"imported {len(modules)} modules in {time.perf_counter() - t:.1f} s")


def _child(request: dict, fds: list[int], added: dict) -> None:
    """In the forked child: become the step's process, run it, exit with its status."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
    signal.set_wakeup_fd(-1)
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**added, **request["env"]})
        sys.argv = [sys.argv[0], *request["argv"]]
        from dyncim.cli import main
        try:
            code = main(request["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except KeyboardInterrupt:
            code = 128 + signal.SIGINT
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        os._exit(code)


def serve(path: str, parent: int | None, idle: float, log=None, preload=PRELOAD) -> None:
    """Import, listen on `path`, fork a child per request; return when `parent` has gone or after
    `idle` seconds without a step."""
    import gc
    log = log or (lambda m: print(f"[dyncim.warm {time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True))
    me, before = _identity(), dict(os.environ)
    _preload(preload, log)
    # variables the imports set for themselves (torch's inductor sets its cache folder): a fresh
    # process would have them too, so each child gets them on top of its client's environment
    added = {k: v for k, v in os.environ.items() if k not in before}
    gc.collect()
    gc.freeze()   # children share the imported modules' pages instead of copying them as GC walks them
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "signal")
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    # started by `parent` (Snakemake's onstart): it has gone when this process is re-parented, even
    # while it is an unreaped zombie; otherwise, when its pid no longer exists
    child_of_parent = parent is not None and os.getppid() == parent
    log(f"serving at {path}")
    try:
        while True:
            for key, _ in sel.select(timeout=1.0):
                if key.data == "accept":
                    conn, _ = server.accept()
                    inherited = [server.fileno(), wake_r, wake_w, *(c.fileno() for c in children.values())]
                    pid = _fork_for(conn, me, added, log, inherited)
                    if pid is None:
                        conn.close()
                    else:
                        children[pid] = conn
                        sel.register(conn, selectors.EVENT_READ, pid)
                elif key.data == "signal":
                    os.read(wake_r, 4096)
                else:   # a client's connection: readable only once the client has gone
                    pid = key.data
                    sel.unregister(key.fileobj)
                    log(f"pid {pid}: its client went away; killing it")
                    _kill(pid)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is not None:
                    if _registered(sel, conn):
                        sel.unregister(conn)
                    try:
                        _send(conn, {"status": status})
                    except OSError:
                        pass
                    conn.close()
                log(f"pid {pid}: exit status {os.waitstatus_to_exitcode(status)}")
                last = time.monotonic()
            if parent is not None and (os.getppid() != parent if child_of_parent else not _alive(parent)):
                log(f"process {parent} that started the worker has gone: exiting")
                return
            if not children and time.monotonic() - last > idle:
                log(f"no step for {idle:.0f} s: exiting")
                return
    finally:
        for pid in list(children):
            _kill(pid)
        server.close()
        try:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass


def _exit_on_signal(sig, _frame):
    raise SystemExit(128 + sig)   # through serve's finally: children killed, socket removed


def _fork_for(conn: socket.socket, me: dict, added: dict, log, inherited: list[int]) -> int | None:
    try:
        request, fds = _recv(conn)
    except (OSError, ValueError):
        return None
    if not isinstance(request, dict) or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return None
    mismatch = [k for k in me if request.get(k) != me[k]]
    if "env" in mismatch:   # name the variables, for the log
        theirs = request.get("env") or {}
        mismatch[mismatch.index("env")] = "env " + ",".join(sorted(
            k for k in set(theirs) | set(me["env"]) if theirs.get(k) != me["env"].get(k)))
    if mismatch or request.get("argv", [None])[0] not in COMMANDS:
        log(f"refused {request.get('argv', [''])[:1]}: differs in {mismatch or 'command'}")
        for fd in fds:
            os.close(fd)
        try:
            _send(conn, {"refused": mismatch or "command"})
        except OSError:
            pass
        return None
    pid = os.fork()
    if pid == 0:
        for fd in [conn.fileno(), *inherited]:   # the worker's socket, wake-up pipe, other clients
            os.close(fd)
        _child(request, fds, added)
    for fd in fds:
        os.close(fd)
    try:
        _send(conn, {"pid": pid})
    except OSError:
        _kill(pid)
    log(f"pid {pid}: {' '.join(request['argv'][:1])} in {request['cwd']}")
    return pid


def _registered(sel, conn) -> bool:
    try:
        sel.get_key(conn)
        return True
    except KeyError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- starting one ------------------------------------------------------------------------------

# what Snakemake sets in each job's environment from the rule's `threads` (snakemake.shell)
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def start(log_path: str, parent: int | None = None, idle: float = 600.0, python: str | None = None,
          threads: int | None = None) -> str:
    """Start a worker in the background (its log at `log_path`) and point this process's
    environment, hence the jobs it starts, at it; returns the socket path. The socket appears
    once the worker has imported everything; until then the jobs run in fresh processes.
    `threads`: the thread count Snakemake will put in the environment of the jobs to serve (the
    worker imports with the same values; jobs given another count run in fresh processes)."""
    import shutil
    import subprocess
    env = dict(os.environ)
    if threads is not None:
        env.update({k: str(threads) for k in THREAD_VARS})
    folder = tempfile.mkdtemp(prefix="dyncim-warm-")   # 0700: only this user can connect
    path = os.path.join(folder, "socket")
    python = python or shutil.which("python") or sys.executable
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as out:
        subprocess.Popen([python, "-m", "dyncim.warm", "--socket", path, "--idle", str(idle),
                          *(["--parent", str(parent)] if parent else [])],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=env)
    os.environ[ENV] = path
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dyncim.warm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True, help="the Unix socket to listen on (its folder is removed at exit)")
    ap.add_argument("--parent", type=int, help="exit when this process has gone")
    ap.add_argument("--idle", type=float, default=600.0, help="exit after this many seconds without a step")
    ap.add_argument("--preload", nargs="*", default=list(PRELOAD),
                    help="modules to import before serving (default: what the steps spend start-up time on)")
    a = ap.parse_args(argv)
    try:
        serve(a.socket, a.parent, a.idle, preload=a.preload)
    except RuntimeError as e:
        print(f"dyncim.warm: not serving: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
