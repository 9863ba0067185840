"""A config file (Python form) defining every server hook: each appends one JSON line
(hook, pid, ppid, details) to the file named by $HOOK_LOG. ``pre_request`` of
``/hook-raises`` raises, to show that a failing hook is logged and nothing else."""

import json
import os

workers = 1


def _record(hook, **details):
    line = json.dumps({"hook": hook, "pid": os.getpid(), "ppid": os.getppid(), **details})
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(line + "\n")


def on_starting(server):
    _record("on_starting", server_pid=server.pid, workers=server.num_workers)


def when_ready(server):
    _record("when_ready", server_pid=server.pid)


def pre_fork(server, worker):
    _record("pre_fork", worker_pid=worker.pid, age=worker.age)


def post_fork(server, worker):
    _record("post_fork", worker_pid=worker.pid, age=worker.age, server_pid=server.pid)


def post_worker_init(worker):
    _record("post_worker_init", worker_pid=worker.pid, app=worker.app.__name__)


def pre_request(worker, req):
    _record(
        "pre_request",
        worker_pid=worker.pid,
        method=req.method,
        path=req.path,
        query=req.query,
        uri=req.uri,
        version=list(req.version),
        headers=req.headers,
    )
    if req.path == "/hook-raises":
        raise RuntimeError("the pre_request hook's own error")


def post_request(worker, req, environ, resp):
    _record(
        "post_request",
        worker_pid=worker.pid,
        path=req.path,
        environ_path=environ["PATH_INFO"],
        status=resp.status,
        status_code=resp.status_code,
        sent=resp.sent,
        content_type=dict(resp.headers).get("Content-Type"),
    )


def worker_exit(server, worker):
    _record("worker_exit", worker_pid=worker.pid)


def child_exit(server, worker):
    _record("child_exit", worker_pid=worker.pid, exit_code=worker.exit_code)


def on_reload(server):
    _record("on_reload", server_pid=server.pid)


def on_exit(server):
    _record("on_exit", server_pid=server.pid)
