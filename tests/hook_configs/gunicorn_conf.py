"""A gunicorn config file as people write them (settings gunicorn knows and rapidwsgi
does not are ignored), used unchanged: the hooks log through ``server.log`` and
``worker.log`` and read gunicorn's attributes."""

import os

bind = "127.0.0.1:0"
workers = 2
worker_class = "gthread"
threads = 2
timeout = 30
accesslog = None
proc_name = "myapp"


def when_ready(server):
    server.log.info("Server is ready. Spawning workers (%d)", server.num_workers)


def post_fork(server, worker):
    server.log.info("Worker spawned (pid: %s, age %s)", worker.pid, worker.age)


def pre_request(worker, req):
    worker.log.info("%s %s", req.method, req.path)


def post_request(worker, req, environ, resp):
    worker.log.info("done %s %s -> %s", req.method, req.path, resp.status)


def worker_exit(server, worker):
    server.log.info("Worker exiting (pid: %s)", worker.pid)


def child_exit(server, worker):
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(f"child_exit {worker.pid}\n")
