"""rst-explain --live on real RSTs: plain socket code (lab/live_causes.py, none of it an
example) makes nine causes in two namespaces of its own while `rst-explain --live --json`
watches them; each RST's first verdicts are the cause's page, with the kernel's reason. And the
kernel's word in rules.KERNEL is what the lab recorded for each page's RST."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from rst_explain import live
from rst_explain.rules import KERNEL, PAGES

from lab.live_causes import CAUSES, CLIENT, SERVER, Watching, make_pair

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "build" / "traces"
REPORT = ROOT / "build" / "live-test.json"
# what the cause's RST carries in the kernel's word (tcp:tcp_send_reset), None: no TCP stack sent it
REASONS = {"closed-port": "NO_SOCKET", "firewall-reject": None, "unread-data-close": "TCP_ABORT_ON_CLOSE",
           "linger-zero": "TCP_STATE", "ss-kill": "TCP_STATE", "listener-closed-queue": "TCP_STATE",
           "write-after-peer-close": "TCP_TIMEWAIT_SOCKET", "keepalive-timeout": "TCP_KEEPALIVE_TIMEOUT",
           "process-killed": "TCP_ABORT_ON_CLOSE"}


def _can_trace() -> str:
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("bpftrace") or not shutil.which("pahole"):
        return "bpftrace or pahole not installed"
    return ""


needs_tracing = pytest.mark.skipif(bool(_can_trace()) and not os.environ.get("CI"),
                                   reason=_can_trace() or "can trace")


@pytest.fixture
def pair():
    found = make_pair()
    yield found
    found.close()


@needs_tracing
def test_each_cause_is_named_by_its_page_with_the_kernels_reason(pair) -> None:
    watching = Watching([pair.path(pair.client), pair.path(pair.server)])
    seen: list[dict[str, Any]] = []
    try:
        assert watching.attached.wait(90) and watching.proc.poll() is None, "".join(watching.stderr)
        assert any(line.startswith("watching") for line in watching.stderr)
        for cause in CAUSES:
            cause.run(pair, cause.port)
            doc = watching.next()
            seen.append({"cause": cause.name, "page": cause.page, **doc})
            sender = SERVER if cause.sender == "server" else CLIENT
            where = f"{cause.name}: {doc['src']} > {doc['dst']}, {doc['reason']}, tie {doc['tie']}"
            assert doc["src"].startswith(sender + ":") and str(cause.port) in (doc["src"] + doc["dst"]), where
            assert doc["reason"] == REASONS[cause.page], where
            assert doc["direction"] == ("received" if REASONS[cause.page] is None else "sent"), where
            assert cause.page in doc["tie"] and len(doc["tie"]) <= 3, where
            # a tie only among pages that the reason, the state and the stack cannot tell apart
            signatures = {(KERNEL[s].sent, KERNEL[s].reason, KERNEL[s].state) for s in doc["tie"]}
            assert len(signatures) == 1, where
            assert all(set(v) >= {"slug", "score", "url"} for v in doc["verdicts"]), where
            assert all(set(doc) >= {"src", "dst", "direction", "reason", "state", "pid", "comm", "errno",
                                    "verdicts"} for doc in [doc])
        summary = watching.stop()
    finally:
        watching.kill()
        REPORT.parent.mkdir(exist_ok=True)
        REPORT.write_text(json.dumps(seen, indent=1))
    assert watching.proc.returncode == 0, "".join(watching.stderr)
    assert summary["summary"]["rsts"] == len(CAUSES)
    assert summary["summary"]["pages"].keys() <= {v for d in seen for v in d["tie"]}
    by_page = {d["page"]: d for d in seen}
    # the process where the kernel sent it, in that process's context
    assert by_page["ss-kill"]["comm"] == "ss" and by_page["ss-kill"]["context"] == "process"
    assert by_page["closed-port"]["context"] == "softirq" and by_page["closed-port"]["pid"] is None
    assert by_page["keepalive-timeout"]["errno"] == "ETIMEDOUT"
    assert by_page["closed-port"]["errno"] == "ECONNREFUSED"
    assert by_page["closed-port"]["dropped"]["reason"] == "NO_SOCKET"
    # pairs a capture ties, told apart by the kernel
    assert "firewall-reject" in {a["slug"] for a in by_page["closed-port"]["told_apart"]}
    assert "closed-port" in {a["slug"] for a in by_page["firewall-reject"]["told_apart"]}
    assert "listener-closed-queue" in {a["slug"] for a in by_page["ss-kill"]["told_apart"]}
    assert "ss-kill" in {a["slug"] for a in by_page["listener-closed-queue"]["told_apart"]}
    assert "process-killed" in {a["slug"] for a in by_page["unread-data-close"]["told_apart"]}
    assert "unread-data-close" in {a["slug"] for a in by_page["process-killed"]["told_apart"]}
    # nothing left running: the bpftrace it named is gone
    (line,) = [line for line in watching.stderr if line.startswith("watching")]
    bpftrace = int(line.partition("bpftrace pid ")[2].partition(")")[0])
    assert not os.path.exists(f"/proc/{bpftrace}")


@needs_tracing
def test_count_ends_it_and_the_filters_narrow_it(pair) -> None:
    watching = Watching([pair.path(pair.client), pair.path(pair.server)], "--count", "1", "--port", "47011")
    try:
        assert watching.attached.wait(90), "".join(watching.stderr)
        CAUSES[0].run(pair, 47010)  # another port: not reported
        CAUSES[0].run(pair, 47011)
        doc = watching.next()
        assert doc["src"] == f"{SERVER}:47011"
        assert "summary" in watching.next() and watching.proc.wait(timeout=30) == 0
    finally:
        watching.kill()


def test_bad_situations_say_so_in_one_line_and_exit_2(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert live.run(_args()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))  # no bpftrace here
    assert live.run(_args()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bpftrace" in err[0]


def test_without_tracefs_it_says_so(monkeypatch, capsys) -> None:
    monkeypatch.setattr(live, "preflight", lambda: None)

    def no_tracefs(timeout: float = 10.0) -> dict:
        raise live.probes.NoTracefs("tracefs cannot be mounted: mount: permission denied")
    monkeypatch.setattr(live.probes, "kernel_formats", no_tracefs)
    assert live.run(_args()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tracefs" in err[0]


def _args(**kw: Any) -> Any:
    import argparse
    return argparse.Namespace(**{"netns": [], "port": [], "host": [], "seconds": None, "count": None,
                                 "rate": 50, "json": True, **kw})


def test_without_the_reason_field_the_state_and_stack_still_decide() -> None:
    names = {"tcp_send_reset": {"state": {1: "TCP_ESTABLISHED", 7: "TCP_CLOSE"}, "reason": {}},
             "inet_sock_set_state": {"oldstate": {7: "TCP_CLOSE", 10: "TCP_LISTEN", 3: "TCP_SYN_RECV",
                                                  1: "TCP_ESTABLISHED"},
                                     "newstate": {7: "TCP_CLOSE", 10: "TCP_LISTEN", 3: "TCP_SYN_RECV",
                                                  1: "TCP_ESTABLISHED"}}}
    watch = live.Live(names, lacking_reason=True, locals_=set)
    flow = ("203.0.113.20", "47005", "203.0.113.10", "40000")
    for old, new in ((10, 3), (3, 1)):
        watch.feed(("inet_sock_set_state", "100", "0", "5", "ffff1", str(old), str(new), *flow), [], [])
    watch.feed(("tcp_send_reset", "200", "0", "5", "ffff1", "1", "-1", *flow), ["0", "0", "0", "0", "77", "ss"],
               ["tcp_send_active_reset+1", "tcp_abort+2", "do_syscall_64+3"])
    (doc,) = watch.settle(0, everything=True)
    assert doc["reason"] is None and doc["state"] == "TCP_ESTABLISHED" and doc["comm"] == "ss"
    assert doc["verdicts"][0]["slug"] == "ss-kill"


def test_the_kernels_word_in_the_rules_is_what_the_lab_recorded() -> None:
    """rules.KERNEL against each page's recording (build/traces, `nox -s examples`): the RST
    its claim names was sent by a TCP stack or not, with this reason and state."""
    if not TRACES.is_dir() or not any(TRACES.glob("*.json")):
        pytest.skip("no recordings in build/traces (nox -s examples)")
    checked = 0
    for slug, page in PAGES.items():
        path = TRACES / f"{slug}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        if not rec.get("tracing", {}).get("recorded"):
            continue
        (packet,) = [p for p in rec["packets"] if p.get("name") == page.packet][:1]
        k, said = KERNEL[slug], packet.get("kernel")
        assert (said is not None) == k.sent, slug
        if said:
            assert (said["reason"], said["state"]) == (k.reason, k.state), slug
        checked += 1
    assert checked, "no recording had the kernel's events"
