"""nginx (Debian's package), run as a real process on a lab host, with its own error log.

    proxy = host.nginx(HTTP_BLOCK)   # starts nginx; returns once its worker is running
    proxy.worker                     # the worker process's pid (its "start worker process" line)
    proxy.error_log()                # the lines this nginx wrote to its error log file, as written
    proxy.stop()                     # SIGTERM, reaped: another nginx may take its port and folder

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
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import process

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


# serve(client_closes=True): nginx's kernel's own acknowledgement of the program's FIN is dropped
CLOSE_ANSWERED = """
table ip lab_close_answered {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {client} tcp sport {port} tcp flags == ack drop
    }}
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
        self.log = self.dir / "error.log"
        self._log_start = self.log.stat().st_size if self.log.exists() else 0  # an earlier nginx's lines
        # as root, nginx gives its worker to the `user` (nobody by default), which the run's user
        # namespace does not map (it maps our own uid only, lab/sandbox.py): keep our own
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
        self.config.write_text(MAIN.format(user=user if os.geteuid() == 0 else "", dir=self.dir,
                                           level=level, http=_indent(http)))
        self.host = host
        host.note("nginx -v", version())
        # -e: the log nginx writes to before it has read its configuration
        self.process = host.process([binary(), "-p", str(self.dir), "-e", str(self.log),
                                     "-c", str(self.config)])
        try:
            started = self.process.wait_for("start worker process ")  # not "...processes"
        except (RuntimeError, TimeoutError) as exc:  # nginx says why in its log: pass it on
            raise RuntimeError(f"{exc}; nginx's error log: " + " | ".join(self.error_log())) from None
        self.worker = int(started.split()[-1])  # "... start worker process 123"

    def pause_worker(self) -> None:
        """SIGSTOP the worker and wait until it has stopped: what reaches it from then on waits,
        and its next epoll_wait() returns all of it at once. kill() returns once the signal is
        queued: a worker not stopped yet can still take a segment arriving meanwhile from
        epoll_wait() and act on it alone after SIGCONT (nginx's debug log showed the event
        without the EINTR a stopped worker's epoll_wait() returns; examples/proxy_upstream_reset.py).

        First the worker is let go back to sleep in epoll_wait(), every event it was given handled:
        an event still queued for it (epoll returns them in the order they came) would otherwise come
        before what arrives while it is stopped. One such is a read event on a backend connection
        whose last bytes nginx had already read with the first: stopped before it got to that event,
        the worker later found it first, with the backend's FIN behind it, and closed the pooled
        connection before reading the client's request (proxy-keepalive-race, under load)."""
        self.host.until("nginx's worker waits for events", lambda: process.waits_in_epoll(self.worker))
        os.kill(self.worker, signal.SIGSTOP)
        self.host.until("nginx's worker is stopped", lambda: self.worker_state() == "T")

    def resume_worker(self) -> None:
        os.kill(self.worker, signal.SIGCONT)

    def worker_state(self) -> str:
        """The worker's state letter in /proc (T: stopped, S: sleeping...)."""
        return process.state(self.worker)

    def serve(self, program: Any, client: Any, method: str, url: str, body_size: int = 0,
              meanwhile: Callable[[], None] | None = None, client_closes: bool = False) -> dict[str, Any]:
        """Run a real client program (lab/clients.py) through this nginx, its packets in one
        order: the worker is stopped until the program's whole request has arrived (and
        `meanwhile()` has run: what the scenario lets arrive behind it); the program is stopped
        from then until nginx has sent its response and gone back to waiting, closing the
        connection first if it does. A program that closes once it has read the status line
        would otherwise race nginx's own close. Returns the program's recorded outcome.

        client_closes: where nginx keeps the connection (it has not closed it once it has answered),
        the program closes it (at its exit at the latest) and nginx's FIN answers the program's,
        carrying the ACK. From the program's resuming
        until nginx has closed, a segment with the ACK flag alone from nginx's port to the client never leaves this host:
        otherwise, when nginx's worker waits more than 40 ms for a CPU, the kernel acknowledges
        the program's FIN by itself first (its delayed-ACK timer; tcp_fin() puts the connection
        in pingpong mode), and the packets after it vary (a soak: the client acknowledged nginx's
        FIN twice, and the second ACK, reaching a closed socket, drew a RST)."""
        self.pause_worker()
        arrived = self.host.expects_request(client)
        running = program.start(method, url, body_size)
        arrived.wait(program.timeout)
        running.pause()
        if meanwhile:
            meanwhile()
        answered = client.expects("P.", source=self.host)
        self.resume_worker()
        answered.wait(program.timeout)
        self.host.until("nginx's worker waits for events again", lambda: process.waits_in_epoll(self.worker))
        port = urlsplit(url).port or 80

        def kept_open() -> bool:  # a connection of nginx's port to the client that nginx has not closed
            return bool(self.host.sh("ss", "-Htn", "state", "established", "state", "close-wait",
                                     "sport", "=", f":{port}", "dst", client.ip).strip())
        held = client_closes and kept_open()  # not when nginx closed first (the program's Connection: close)
        if held:
            self.host.nft(CLOSE_ANSWERED.format(client=client.ip, port=port))
        running.resume()
        outcome = running.wait()
        if held:
            self.host.until("nginx has answered the program's FIN", lambda: not kept_open(), timeout=program.timeout)
            self.host.nft("delete table ip lab_close_answered")
        return outcome

    def error_log(self) -> list[str]:
        """The lines this nginx wrote to its error log file (not an earlier one's), as written."""
        if not self.log.exists():
            return []
        with self.log.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace").splitlines()

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown: the master stops its worker) and reap the master."""
        self.process.kill(signal.SIGTERM)


def _indent(block: str) -> str:
    return "\n".join("    " + line if line.strip() else "" for line in block.strip("\n").splitlines())
