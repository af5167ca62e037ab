"""nginx (Debian's package), run as a real process on a lab host, with its own error log.

    proxy = host.nginx(HTTP_BLOCK)   # starts nginx; returns once its worker is running
    proxy.worker                     # the worker process's pid (its "start worker process" line)
    proxy.error_log()                # the lines nginx wrote to its error log file, as written

The example gives the `http { ... }` block; this module adds what any nginx needs to run
inside a run's sandbox (every file system read-only but the run's folder): its pid file,
logs and temporary files in `nginx/` under the run's folder, `daemon off` so the lab's
process handling owns it (the host kills it at the end of the run; so does the sandbox),
one worker. The configuration file it writes there is the one nginx reads.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

PACKAGE = "nginx"  # Debian's package that installs /usr/sbin/nginx

# the process-wide part of the configuration: everything in the run's folder
MAIN = """\
{user}daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
# the error log the page quotes; stdout is how the lab knows the worker has started
error_log {dir}/error.log {level};
error_log /dev/stdout notice;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}
}}
"""


class NginxMissing(RuntimeError):
    """nginx is not installed; the message names the Debian package."""


def binary() -> str:
    found = shutil.which("nginx")  # /usr/sbin: the lab's preflight puts it on PATH
    if not found:
        raise NginxMissing(f"nginx is not installed (Debian package {PACKAGE}): apt-get install {PACKAGE}")
    return found


def version() -> str:
    """What `nginx -v` prints (on stderr), e.g. "nginx version: nginx/1.22.1"."""
    done = subprocess.run([binary(), "-v"], capture_output=True, text=True, check=True)
    return (done.stderr or done.stdout).strip()


class Nginx:
    def __init__(self, host: Any, http: str, level: str = "error") -> None:
        self.dir = Path.cwd() / "nginx"  # the run's folder (lab/sandbox.py) is the working directory
        self.dir.mkdir(exist_ok=True)
        self.config = self.dir / "nginx.conf"
        # as root, nginx gives its worker to the `user` (nobody by default), which the run's user
        # namespace does not map (it maps our own uid only, lab/sandbox.py): keep our own
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
        self.config.write_text(MAIN.format(user=user if os.geteuid() == 0 else "", dir=self.dir,
                                           level=level, http=_indent(http)))
        host.note("nginx -v", version())
        # -e: the log nginx writes to before it has read its configuration
        self.process = host.process([binary(), "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                                     "-c", str(self.config)])
        try:
            started = self.process.wait_for("start worker process ")  # not "...processes"
        except (RuntimeError, TimeoutError) as exc:  # nginx says why in its log: pass it on
            raise RuntimeError(f"{exc}; nginx's error log: " + " | ".join(self.error_log())) from None
        self.worker = int(started.split()[-1])  # "... start worker process 123"

    def pause_worker(self) -> None:
        """SIGSTOP the worker: what reaches it meanwhile waits, in the order it arrived."""
        os.kill(self.worker, signal.SIGSTOP)

    def resume_worker(self) -> None:
        os.kill(self.worker, signal.SIGCONT)

    def worker_state(self) -> str:
        """The worker's state letter in /proc (T: stopped, S: sleeping...)."""
        return Path(f"/proc/{self.worker}/stat").read_text().rsplit(")", 1)[1].split()[0]

    def error_log(self) -> list[str]:
        """The error log file's lines, as nginx wrote them."""
        path = self.dir / "error.log"
        return path.read_text().splitlines() if path.exists() else []


def _indent(block: str) -> str:
    return "\n".join("    " + line if line.strip() else "" for line in block.strip("\n").splitlines())
