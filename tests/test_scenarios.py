"""Every scenario, recorded fresh: its claims hold and its artifacts agree."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import subprocess

import pytest
from lab import shapes
from lab.artifact import TRACES, load as load_recording
from lab.capture import read_packets, trace_text
from lab.runner import Result
from lab.scenarios import all_slugs, load

from own_recordings import Recorded

SLUGS = all_slugs()
LAB_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
EPHEMERAL = 32768  # net.ipv4.ip_local_port_range's default start: a port the kernel picked at random
STARTED = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@pytest.fixture(params=SLUGS)
def result(request: pytest.FixtureRequest, recorded: Recorded) -> Result:
    """The scenario's Result, once it passed (the test fails naming the recording otherwise)."""
    return recorded[request.param]


def artifact(slug: str, suffix: str):
    return TRACES / f"{slug}{suffix}"


def test_claims_hold_on_a_fresh_capture(result: Result) -> None:
    """A failed run fails here by `result`, its problem shown once at the top of the report;
    a run that passed checked and held every claim."""
    claims = result.recording.claims if result.recording else []
    assert claims and all(c["passed"] is True for c in claims), (result.slug, claims)


def test_artifacts_exist_and_agree(result: Result) -> None:
    slug = result.slug
    data = json.loads(artifact(slug, ".json").read_text())
    pcap = artifact(slug, ".pcap")
    for key in ("slug", "title", "recorded_at", "kernel", "tcpdump_version", "hosts",
                "outcomes", "counters", "claims"):
        assert key in data, key
    assert data["slug"] == slug
    assert data["title"] == load(slug).title
    assert dt.datetime.fromisoformat(data["recorded_at"]) >= STARTED, "not recorded by this run"
    assert data["pcap_sha256"] == hashlib.sha256(pcap.read_bytes()).hexdigest()
    assert artifact(slug, ".txt").read_text() == trace_text(pcap, load(slug).trace_options)
    packets = read_packets(pcap, data["addresses"])
    rec = load_recording(slug)  # the schema's own reading of it
    # the same packets as the pcap, each with the name its claim gave it (or a noise reason)
    assert [p.wire() for p in rec.packets] == packets
    assert all(bool(p.name) != bool(p.noise) for p in rec.packets), [p.label() for p in rec.packets]
    assert rec.shape == [[p.sender, p.flags, p.payload > 0, p.name or "(noise)"] for p in rec.packets]
    assert shapes.difference(slug, rec.shape) == "", "the published trace's shape is not the committed one"
    assert data["claims"] and all(c["passed"] is True for c in data["claims"]), "as root every claim is checked"
    # outcomes: per host, each entry either returned or raised with an errno name
    assert set(data["outcomes"]) <= set(data["hosts"])
    for entries in data["outcomes"].values():
        for entry in entries:
            assert ("returned" in entry) != ("raised" in entry), entry
    for host, deltas in data["counters"].items():
        assert host in data["hosts"] and all(v != 0 for v in deltas.values())


def test_every_packet_stays_in_the_lab(result: Result) -> None:
    data = json.loads(artifact(result.slug, ".json").read_text())
    for packet in data["packets"]:
        for address in (packet["src"], packet["dst"]):
            assert any(ipaddress.ip_address(address) in net for net in LAB_NETS), packet
    for address in data["hosts"].values():
        assert any(ipaddress.ip_address(address) in net for net in LAB_NETS)


def test_text_trace_is_tcpdumps_own(result: Result) -> None:
    """The .txt is what tcpdump prints for the .pcap; one line per packet without -v."""
    slug = result.slug
    if load(slug).trace_options:
        pytest.skip("verbose traces wrap lines")
    lines = artifact(slug, ".txt").read_text().splitlines()
    data = json.loads(artifact(slug, ".json").read_text())
    assert len(lines) == len(data["packets"])
    # the version recorded is the installed package's (dpkg's "4.99.3-1" has it upstream first)
    package = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "tcpdump"], capture_output=True, text=True)
    if package.returncode == 0:
        assert package.stdout.split(":")[-1].startswith(data["tcpdump_version"] + "-"), package.stdout


def test_every_trace_keeps_its_shape_over_consecutive_runs(tmp_path) -> None:
    """A short version of `nox -s examples -- --repeat 50 --busy 1`: same shape, every run."""
    from lab.runner import Runner, format_shapes  # each run is also compared with the committed shape

    results = Runner(out=tmp_path).run(SLUGS, repeat=3)
    for slug in SLUGS:
        mine = [r for r in results if r.slug == slug]
        failed = [r for r in mine if not r.ok]
        assert not failed, f"{slug}, run {mine.index(failed[0]) + 1}:\n{failed[0].problem}\n{format_shapes(mine)}"


def test_every_committed_shape_belongs_to_a_scenario() -> None:
    """A shape left behind by a renamed or removed example would never be checked again."""
    committed = {p.stem for p in (shapes.path_of("x").parent).glob("*.txt")}
    assert committed == set(SLUGS), f"shapes without example: {committed - set(SLUGS)}; examples without shape:" \
                                    f" {set(SLUGS) - committed}"


# -- the kernel's own word -------------------------------------------------------------------

def test_the_kernel_word_is_recorded_for_every_rst(result: Result) -> None:
    rec = load_recording(result.slug)
    assert rec.tracing["recorded"] is True, rec.tracing
    assert set(rec.tracing["events"]) == {"tcp_send_reset", "tcp_receive_reset", "inet_sock_set_state",
                                          "inet_sk_error_report", "kfree_skb"}
    assert rec.tracing["kernel"] == rec.kernel and not rec.tracing.get("incomplete")
    for p in rec.resets():
        assert p.kernel is None or (p.kernel["event"] == "tcp_send_reset" and p.kernel["reason"]
                                    and p.kernel["state"] and p.kernel["host"] in rec.hosts), p
    sent = [e for e in rec.kernel_events if e["event"] == "tcp_send_reset" and e.get("packet")]
    assert len(sent) == sum(1 for p in rec.resets() if p.kernel), "each RST event ties to one packet"
    # every socket that connected or listened shows its path, which starts where a socket starts
    for label, path in rec.states.items():
        assert label.split()[0] in rec.hosts and len(path) >= 2 and path[0] in ("TCP_CLOSE", "TCP_LISTEN"), (label, path)


def test_no_kernel_event_lands_in_another_scenario(recorded: Recorded) -> None:
    """The catalogue ran in parallel, every scenario with the same addresses: each event
    given to a scenario is about a flow of its own capture (ephemeral ports differ per run),
    a listener on one of its ports, a connect that has no port yet, or, behind a NAT, a flow
    with one end (address and port) in its capture and the other on one of its hosts. Flows
    on a link the capture does not see (a proxy's own connection) can only be checked to run
    between this scenario's hosts."""
    for slug in recorded.every():
        rec = load_recording(slug)
        flows = {(p.src, p.sport, p.dst, p.dport) for p in rec.packets}
        flows |= {(d, dp, s, sp) for s, sp, d, dp in flows}
        ports = {(p.src, p.sport) for p in rec.packets} | {(p.dst, p.dport) for p in rec.packets}
        own = {a for addresses in rec.addresses.values() for a in addresses}
        captured = {p.src for p in rec.packets} | {p.dst for p in rec.packets}
        last = rec.packets[-1].time
        for e in rec.kernel_events:
            flow = (e["src"], e["sport"], e["dst"], e["dport"])
            mine = (flow in flows or (e["dport"] == 0 and ((e["src"], e["sport"]) in ports
                                                         or e["src"] in own | {"127.0.0.1", "0.0.0.0"}))
                    or (e["sport"] == 0 and (e["dst"], e["dport"]) in ports)
                    or ((e["src"], e["sport"]) in ports and e["sport"] >= EPHEMERAL and e["dst"] in own)
                    or ((e["dst"], e["dport"]) in ports and e["dport"] >= EPHEMERAL and e["src"] in own)
                    or (e["src"] in own and e["dst"] in own and not {e["src"], e["dst"]} <= captured))
            assert mine, f"{slug}: an event about a flow not in its capture: {e}"
            assert e["host"] in rec.hosts and -1.0 < e["time"] < last + 1.0, (slug, e)
