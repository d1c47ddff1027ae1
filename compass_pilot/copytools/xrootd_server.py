"""A real XRootD server for the tests and ``compass-pilot demo --xrootd``.

``xrootd`` refuses to run as root, so it runs as the ``xrootd`` user (``-R xrootd``)
over directories that user owns, with the adler32 checksum plug-in so that
``xrdfs query checksum`` answers as EOS does.  It listens on a free port; only
loopback clients ever talk to it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class XRootDServer:
    """``with XRootDServer(dir) as server:`` → ``server.url`` (``root://127.0.0.1:PORT/``), ``server.data``."""

    def __init__(self, root_dir: Path | None = None, port: int = 0) -> None:
        # The server runs as the xrootd user, which must be able to reach its dirs: pytest's
        # and mkdtemp's private (0700) trees are not, so by default it gets a dir of its own.
        self.owned = root_dir is None
        self.root = Path(root_dir) if root_dir is not None else Path(tempfile.mkdtemp(prefix="compass-xrootd-"))
        self.data = self.root / "data"
        self.port = port or _free_port()
        self.url = f"root://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> XRootDServer:
        binary = shutil.which("xrootd")
        if binary is None:
            raise RuntimeError("xrootd not found (install Debian's xrootd-server)")
        (self.root / "admin").mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        config = self.root / "xrootd.cfg"
        config.write_text(
            f"xrd.port {self.port}\nall.export /\noss.localroot {self.data}\nxrootd.chksum adler32\n"
            f"all.adminpath {self.root / 'admin'}\nall.pidpath {self.root / 'admin'}\n"
        )
        cmd = [binary, "-c", str(config), "-l", str(self.root / "xrootd.log")]
        if os.geteuid() == 0:
            user = pwd.getpwnam("xrootd")
            for path in (self.root, self.root / "admin", self.data):
                os.chown(path, user.pw_uid, user.pw_gid)
            cmd += ["-R", "xrootd"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xrootd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)  # bounded start-up wait for the port
        self.stop()
        raise RuntimeError(f"xrootd did not listen on {self.port} within 15 s: {self.log_tail()}")

    def log_tail(self) -> str:
        logs = sorted(self.root.glob("xrootd.log*"))
        return logs[-1].read_text(errors="replace")[-1500:] if logs else "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)

    def give_to_server(self, path: Path) -> None:
        """Hand a file or dir under the export to the server's user (tests that seed storage)."""
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam("xrootd")
        for dirpath, dirnames, filenames in os.walk(path):
            os.chown(dirpath, user.pw_uid, user.pw_gid)
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid)

    def __enter__(self) -> XRootDServer:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()
