"""A fork server for the tests: runs console scripts (``nnUNetv2_train``, ``nnunet-ext``, ...) in fresh processes
forked from an interpreter that has already imported torch and the other heavy third-party modules.

Why: a console script spends 7-15 s importing torch (with ``torch._dynamo``, which nnU-Net's training entry
imports), matplotlib, pandas, ... before it does anything; the test suite starts about a hundred of them. Forked
from this server, each one starts in well under a second.

What a run is: a new process (``fork``) in its own session, with exactly the environment and arguments the test
gave, stdout and stderr to the files the test named, which calls the console script's entry point (found in the
installed distributions' metadata, the function pip's wrapper script calls) and exits as that script would
(``sys.exit(entry())``: atexit handlers and multiprocessing's clean-up run). Nothing of nnU-Net or nnunet_ext is
imported before the fork, so settings they read at import (``nnUNet_raw``, ...) come from the run's environment.
Subprocesses the run starts (``spawn`` pools, nnU-Net's predictor workers) start Python from scratch as before.

Protocol (one Unix-socket connection per run): the client sends one JSON line ``{"name", "args", "env", "cwd",
"stdout", "stderr"}``; the server answers ``{"pid": PID}`` at once and ``{"returncode": RC}`` when the run has
ended (negative: killed by that signal, like ``subprocess``). The server is single-threaded (it never forks while
another thread holds a lock): it waits for new connections and reaps finished runs in one loop.

``python tests/forkserver.py SOCKET`` runs the server (``conftest.py`` starts it for the session with the tests'
environment); it stops when its parent (the pytest process) has gone.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys

PRELOAD = ("torch", "torch._dynamo", "numpy", "scipy.ndimage", "scipy.optimize", "SimpleITK", "matplotlib",
           "pandas", "blosc2", "batchgenerators.dataloading.nondet_multi_threaded_augmenter",
           "batchgeneratorsv2.transforms.spatial.spatial", "dynamic_network_architectures.architectures.unet",
           "acvl_utils.cropping_and_padding.bounding_boxes", "sklearn.model_selection", "tqdm", "PIL.Image")


def entry_point(name: str):
    """The function the console script ``name`` calls (its ``console_scripts`` entry point)."""
    from importlib.metadata import entry_points

    found = entry_points(group="console_scripts", name=name)
    if not found:
        raise SystemExit(f"forkserver: no console script named {name!r} in this environment")
    return next(iter(found)).load()


def run_child(request: dict) -> None:
    """In the forked process: become the console script (never returns)."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for stream, fd in (("stdout", 1), ("stderr", 2)):
        target = os.open(request[stream], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.stdout.reconfigure(line_buffering=True)  # as a script writing to a pipe would flush at exit; lines
    if os.environ.get("PYTHONFAULTHANDLER"):     # survive a kill, and stacks can be dumped on SIGABRT
        import faulthandler
        faulthandler.enable()
    os.chdir(request["cwd"])
    sys.argv = [request["name"], *request["args"]]
    sys.exit(entry_point(request["name"])())


def serve(path: str) -> None:
    for module in PRELOAD:
        try:
            __import__(module)
        except ImportError:
            pass
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    running = {}  # pid -> connection waiting for its return code
    print("forkserver ready", flush=True)
    while True:
        for key, _ in sel.select(timeout=0.05):
            conn, _ = listener.accept()
            with conn.makefile("r") as f:
                request = json.loads(f.readline())
            pid = os.fork()
            if pid == 0:
                sel.close()
                listener.close()
                for c in running.values():
                    c.close()
                conn.close()
                run_child(request)
            conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
            running[pid] = conn
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = running.pop(pid, None)
            if conn is not None:
                code = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall((json.dumps({"returncode": code}) + "\n").encode())
                except OSError:
                    pass
                conn.close()
        if os.getppid() != parent:  # pytest has gone: stop (runs still going are in their own sessions)
            return


class ForkServerClient:
    """Runs console scripts through a server at ``path``: ``start`` -> pid, ``wait`` -> return code."""

    def __init__(self, path: str):
        self.path = path

    def start(self, name: str, args, env: dict, stdout: str, stderr: str, cwd: str | None = None):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        request = {"name": name, "args": [str(a) for a in args], "env": dict(env), "cwd": cwd or os.getcwd(),
                   "stdout": str(stdout), "stderr": str(stderr)}
        conn.sendall((json.dumps(request) + "\n").encode())
        reader = conn.makefile("r")
        pid = json.loads(reader.readline())["pid"]
        return pid, conn, reader

    @staticmethod
    def wait(conn, reader, timeout: float | None):
        """The run's return code, or None when ``timeout`` passed first."""
        conn.settimeout(timeout)
        try:
            line = reader.readline()
        except (socket.timeout, TimeoutError):
            return None
        reader.close()
        conn.close()
        return json.loads(line)["returncode"]


if __name__ == "__main__":
    serve(sys.argv[1])
