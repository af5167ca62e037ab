"""Can this machine run the lab? Tools and privileges, checked before anything is touched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

TOOLS = {"tcpdump": "tcpdump", "nsenter": "util-linux", "nft": "nftables", "ss": "iproute2", "ip": "iproute2",
         "conntrack": "conntrack"}
# Debian installs nft, tcpdump, ip and conntrack in /usr/sbin, which a normal user's PATH lacks
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class LabUnavailable(RuntimeError):
    """This machine cannot run the lab; the message says what to do."""


def preflight() -> list[str]:
    """Check tools and privileges; return the prefix that runs a worker with enough rights."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in SBIN if d not in path])  # for every child too
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise LabUnavailable("missing " + ", ".join(missing) + ": apt-get install "
                             + " ".join(sorted({TOOLS[m.split()[0]] for m in missing})))
    if os.geteuid() == 0:
        return []
    # rootless: a user namespace gives the worker CAP_NET_ADMIN/CAP_NET_RAW over its own
    # network namespaces while its uid stays ours (tcpdump refuses to run as a fake root)
    prefix = ["unshare", "--user", "--map-current-user", "--net", "--mount", "--keep-caps"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        restricted = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        hint = ""
        if restricted.exists() and restricted.read_text().strip() == "1":
            hint = (" AppArmor restricts unprivileged user namespaces here (Ubuntu 24.04+):"
                    " run with sudo, or `sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0`.")
        raise LabUnavailable(
            "the lab needs network namespaces: run as root (sudo), or allow unprivileged user"
            f" namespaces. `unshare --user` said: {probe.stderr.strip()}.{hint}")
    return prefix
