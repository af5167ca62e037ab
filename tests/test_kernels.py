"""Other kernels (lab/matrix.py, docs/fieldguide/kernels.py): a claim a kernel cannot satisfy
is not applicable there, not failed; a kernel that cannot be booted is named and leaves nothing.

Booting a real guest takes minutes under emulation: only with LAB_GUEST_TESTS=1 (not in
the default run). The boot-failure test below starts QEMU on an image that is not a kernel and
gives it 15 s to say it booted (it hangs; the guest is killed); it runs where
qemu-system-x86 (.ci/setup installs it) and virtme-ng (a test extra, pyproject.toml) are installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lab import matrix
from lab.artifact import MATRIX, ROOT, TRACES, Packet, claim_status
from lab.trace import Trace


def rst(kernel: dict | None) -> Packet:
    return Packet(1, 0.0, "server", "client", "192.0.2.2", "192.0.2.1", 80, 40000, "R.", 0, 1, 0, 0, 64, 0,
                  kernel=kernel, received=None)


def traced(**extra) -> dict:
    return {"recorded": True, "events": ["tcp_send_reset", "kfree_skb"], "missing": {}, **extra}


def test_a_reason_claim_is_not_applicable_on_a_kernel_without_the_reason_field():
    # Linux 6.1: tcp_send_reset has no reason field; the tracer traces it without (reason None)
    p = rst({"event": "tcp_send_reset", "host": "server", "state": "TCP_CLOSE", "reason": None})
    trace = Trace([p], [], tracing=traced(lacking={"tcp_send_reset": ["reason"]}))
    trace.sent_by(p, "NO_SOCKET")
    (claim,) = trace.claims
    assert claim_status(claim) == "not applicable"
    assert "no reason field" in claim["not_applicable"]
    assert trace.passed  # not a failure


def test_the_same_claim_is_checked_where_the_kernel_has_the_field():
    p = rst({"event": "tcp_send_reset", "host": "server", "state": "TCP_CLOSE", "reason": "NOT_SPECIFIED"})
    trace = Trace([p], [], tracing=traced(reasons={"tcp_send_reset": ["NOT_SPECIFIED", "NO_SOCKET"]}))
    trace.sent_by(p, "NO_SOCKET")
    assert [claim_status(c) for c in trace.claims] == ["failed"]
    trace = Trace([p], [], tracing=traced(reasons={"tcp_send_reset": ["NOT_SPECIFIED", "NO_SOCKET"]}))
    trace.sent_by(p, "NOT_SPECIFIED")
    assert [claim_status(c) for c in trace.claims] == ["held"]


def test_no_tcp_stack_claims_stay_checkable_without_the_reason_field():
    # reason=None asserts the absence of the event, which a kernel without the field still shows
    p = rst({"event": "tcp_send_reset", "host": "server", "state": "TCP_CLOSE", "reason": None})
    trace = Trace([p], [], tracing=traced(lacking={"tcp_send_reset": ["reason"]}))
    trace.sent_by(p, None)
    assert [claim_status(c) for c in trace.claims] == ["failed"]


def test_a_drop_reason_the_kernel_lacks_is_not_applicable_and_one_it_has_is_checked():
    trace = Trace([rst(None)], [], tracing=traced(reasons={"kfree_skb": ["NO_SOCKET", "NETFILTER_DROP"]}))
    trace.dropped("server", "TCP_LISTEN_OVERFLOW")
    trace.dropped("server", "NETFILTER_DROP")  # known to the kernel, and no such drop: failed
    assert [claim_status(c) for c in trace.claims] == ["not applicable", "failed"]


def test_not_traced_stays_not_checked_rather_than_not_applicable():
    trace = Trace([rst(None)], [], tracing={"recorded": False, "why": "no root", "events": []})
    trace.sent_by(trace.packets[0], "NO_SOCKET")
    assert [claim_status(c) for c in trace.claims] == ["not checked"]


def run_matrix(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", "matrix", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, **(env or {})})


def test_a_kernel_image_that_is_not_there_is_named_and_nothing_is_written():
    proc = run_matrix("--kernel", "/nonexistent/vmlinuz-9.9.9-bogus")
    assert proc.returncode == 3, proc.stderr
    assert "kernel 9.9.9-bogus: no image /nonexistent/vmlinuz-9.9.9-bogus" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (TRACES / "9.9.9-bogus").exists()


def test_an_unknown_kernel_name_lists_the_known_ones():
    proc = run_matrix("--kernel", "no-such-kernel")
    assert proc.returncode == 3
    assert "unknown kernel 'no-such-kernel'" in proc.stderr
    assert matrix.KERNELS[0].name in proc.stderr


def test_a_guest_that_does_not_boot_is_named_and_leaves_nothing(tmp_path: Path):
    try:
        found = matrix.tools()
    except matrix.MatrixError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    image = tmp_path / "vmlinuz-0.0.0-panics"
    image.write_bytes(b"\x00" * 4096)  # not a kernel: QEMU hangs on it, the guest never speaks
    kernel = matrix.by_name([str(image)])[0]
    out = tmp_path / "traces"
    with pytest.raises(matrix.MatrixError) as raised:
        matrix.record(kernel, found, nice=0, out=out, boot_timeout=15)
    assert str(raised.value).startswith("kernel 0.0.0-panics did not boot")
    assert [p.name for p in out.iterdir()] == []  # no KERNEL folder, no temporary one
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _mentions(p, out)]
    assert not left, "a guest's process outlived its failed boot"


def _mentions(proc: Path, folder: Path) -> bool:
    try:
        return str(folder).encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.skipif(not os.environ.get("LAB_GUEST_TESTS"),
                    reason="boots a real guest (minutes under emulation): set LAB_GUEST_TESTS=1")
def test_a_real_guest_records_a_scenario(tmp_path: Path):
    kernel = matrix.KERNELS[0]
    if not kernel.image.is_file():
        pytest.skip(f"{kernel.package} is not installed")
    figures = matrix.record(kernel, matrix.tools(), out=tmp_path, slugs=("closed-port",))
    assert figures["release"] == kernel.name
    assert figures["results"]["closed-port"]["recorded"]
    assert (tmp_path / kernel.name / "closed-port.pcap").is_file()
    assert (tmp_path / kernel.name / MATRIX).is_file()
