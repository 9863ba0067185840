"""Listening sockets: parsing bind addresses and creating TCP, unix and inherited sockets.

Contract: :func:`parse_address` accepts ``HOST:PORT``, ``[IPv6]:PORT``, ``HOST`` (port
8000), ``unix:PATH`` and ``fd://N``; :func:`bind` returns a listening, non-blocking
socket or raises :class:`~rapidwsgi.errors.BindError` with a one-line reason.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Final

from .errors import BindError

DEFAULT_PORT: Final = 8000


class Address:
    """A parsed bind address. ``kind`` is ``"tcp"``, ``"unix"`` or ``"fd"``."""

    __slots__ = ("fd", "host", "kind", "path", "port", "text")

    def __init__(
        self,
        kind: str,
        text: str,
        *,
        host: str = "",
        port: int = 0,
        path: str = "",
        fd: int = -1,
    ) -> None:
        self.kind = kind
        self.text = text
        self.host = host
        self.port = port
        self.path = path
        self.fd = fd

    def __repr__(self) -> str:
        return f"Address({self.text!r})"


def parse_address(text: str) -> Address:
    """Parse one ``--bind`` value (see the module docstring)."""
    if text.startswith("unix:"):
        path = text[5:]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise BindError(f"{text!r}: empty unix socket path")
        return Address("unix", text, path=path)
    if text.startswith("fd://"):
        try:
            fd = int(text[5:])
        except ValueError:
            raise BindError(f"{text!r}: expected fd://N with a file descriptor number") from None
        if fd < 0:
            raise BindError(f"{text!r}: file descriptor must be >= 0")
        return Address("fd", text, fd=fd)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BindError(f"{text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise BindError(f"{text!r}: put IPv6 addresses in brackets, e.g. [::1]:8000")
    else:
        host, _, port_text = text.partition(":")
        if ":" not in text:
            port_text = str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise BindError(f"{text!r}: invalid port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise BindError(f"{text!r}: port out of range")
    return Address("tcp", text, host=host or "0.0.0.0", port=port)


def bind(
    address: Address, backlog: int = 2048, umask: int = 0, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """Create the listening socket for ``address``.

    ``reuse_port`` sets SO_REUSEPORT (TCP only), so that several processes can each bind
    their own socket to the same address; ``listen=False`` only binds (the master of a
    ``--reuse-port`` server holds the port that way without receiving connections).
    """
    try:
        if address.kind == "unix":
            sock = _bind_unix(address.path, umask)
        elif address.kind == "fd":
            sock = _adopt_fd(address.fd)
        else:
            sock = _bind_tcp(address.host, address.port, reuse_port)
        if listen:
            sock.listen(backlog)
    except BindError:
        raise
    except OSError as exc:
        raise BindError(f"cannot listen on {address.text}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _bind_tcp(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind to {_format(host, port)}: {exc.strerror or exc}") from None
    return sock


def _bind_unix(path: str, umask: int) -> socket.socket:
    _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(umask)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind to unix:{path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a leftover socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"cannot bind to unix:{path}: a file that is not a socket exists there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise BindError(f"cannot bind to unix:{path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise BindError(f"cannot bind to unix:{path}: Address already in use")


def _adopt_fd(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"fd://{fd}: not a usable socket: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise BindError(f"fd://{fd}: not a stream socket")
    return sock


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(sock: socket.socket, tls: bool = False) -> str:
    """A URL-ish name for a listening socket, e.g. ``http://127.0.0.1:8000`` (``https://``
    when it serves TLS)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = name if isinstance(name, str) else name.decode()
        return f"unix:{path}" + (" (TLS)" if tls else "")
    host, port = name[0], name[1]
    return f"{'https' if tls else 'http'}://{_format(host, port)}"


def reuse_port_twin(sock: socket.socket, backlog: int) -> socket.socket:
    """A new listening socket on the same TCP address as ``sock`` (SO_REUSEPORT)."""
    host, port = sock.getsockname()[:2]
    twin = socket.socket(sock.family, socket.SOCK_STREAM)
    try:
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        twin.bind((host, port))
        twin.listen(backlog)
    except OSError as exc:
        twin.close()
        raise BindError(
            f"cannot bind a SO_REUSEPORT socket to {_format(host, port)}: {exc.strerror}"
        ) from None
    twin.setblocking(False)
    return twin


SD_LISTEN_FDS_START: Final = 3


def systemd_sockets(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """Listening sockets passed by systemd socket activation (``LISTEN_FDS``/``LISTEN_PID``).

    The variables are removed from the environment so that children do not take the
    sockets for theirs (sd_listen_fds(3)). Variables that promise sockets which are not
    there (a wrong LISTEN_FDS, a closed fd 3) raise :class:`BindError`.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if not pid or not count:
        return []
    env.pop("LISTEN_PID", None)
    env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()):
        return []
    try:
        number = int(count)
    except ValueError:
        raise BindError(f"LISTEN_FDS={count!r}: not a number of file descriptors") from None
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + number):
        try:
            sock = _adopt_fd(fd)  # before anything else touches the fd: it may be closed
        except BindError as exc:
            raise BindError(f"socket activation (LISTEN_FDS={number}): {exc}") from None
        sock.setblocking(False)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def chown_unix_sockets(sockets: list[socket.socket], uid: int, gid: int) -> None:
    """Give unix socket files to the user the server runs as (after dropping root)."""
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            if isinstance(name, str) and name:
                os.chown(name, uid, gid)
