"""The one tracer program: the bpftrace probes on the kernel's TCP tracepoints and the decoding
of what they print, shared by the lab (examples/lab/tracer.py records each run's events) and
`rst-explain --live` (live.py watches the machine).

Tracepoints (each line bpftrace prints: `E NAME NSECS CPU NETNS SOCKET FIELDS... SRC SPORT DST DPORT`):

    tcp:tcp_send_reset          a RST a TCP stack sends: its reason (Linux 6.10 and later) and
                                the sending socket's state (UNKNOWN: no socket)
    tcp:tcp_receive_reset       a RST a socket accepted, and that socket's state
    sock:inet_sock_set_state    each TCP socket's path through the states
    sock:inet_sk_error_report   each error reported to a TCP socket (no namespace: it carries none)
    skb:kfree_skb               each TCP segment the stack dropped, with the drop reason

The live mode adds, after ` ~ `, what it needs beyond the lab's record (the lab's lines are
unchanged): for tcp_send_reset the segment answered (flags, payload bytes), the socket's byte
counts (an active reset's), the task's pid and comm and the kernel's stack, printed on the lines
after it up to a line `|`; for tcp_receive_reset the receiving socket's byte counts.

Standard library only: no import of the lab, so that `rst-explain` needs nothing else.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Callable
from typing import Any

from . import capture

EVENTS = ("tcp_send_reset", "tcp_receive_reset", "inet_sock_set_state", "inet_sk_error_report", "kfree_skb")
FORMATS = {"tcp_send_reset": "tcp/tcp_send_reset", "tcp_receive_reset": "tcp/tcp_receive_reset",
           "inet_sock_set_state": "sock/inet_sock_set_state", "inet_sk_error_report": "sock/inet_sk_error_report",
           "kfree_skb": "skb/kfree_skb"}
TRACEFS = "/sys/kernel/tracing"
PORT = "($P >> 8) | (($P & 0xff) << 8)"  # network to host order, in bpftrace
STACK_DEPTH = 16  # frames of the kernel's stack at a sent RST (live): deep enough to reach
                  # handle_softirqs() or do_syscall_64() from tcp_v4_send_reset()
LIVE_MARK = " ~ "  # on a live line, what follows is the live mode's own

# The kernel structures the probes read, by the offsets this kernel's BTF gives (pahole,
# Debian package dwarves): declared in the script, so bpftrace need not load the whole BTF
# (that alone took 0.45 s of its 0.9 s start). (struct, member) -> (name in the script, C type)
LAYOUT = {
    ("sock_common", "skc_family"): ("fg_sock", "family", "unsigned short"),
    ("sock_common", "skc_state"): ("fg_sock", "state", "unsigned char"),
    ("sock_common", "skc_net"): ("fg_sock", "net", "struct fg_net *"),
    ("net", "ns"): ("fg_net", "ns", "struct fg_ns"),
    ("ns_common", "inum"): ("fg_ns", "inum", "unsigned int"),
    ("sk_buff", "dev"): ("fg_skb", "dev", "struct fg_dev *"),
    ("sk_buff", "sk"): ("fg_skb", "sk", "struct fg_sock *"),
    ("sk_buff", "transport_header"): ("fg_skb", "transport_header", "unsigned short"),
    ("sk_buff", "network_header"): ("fg_skb", "network_header", "unsigned short"),
    ("sk_buff", "head"): ("fg_skb", "head", "unsigned char *"),
    ("net_device", "nd_net"): ("fg_dev", "net", "struct fg_net *"),
}
# the live mode's: a TCP socket's byte counts (struct tcp_sock, include/linux/tcp.h)
LIVE_LAYOUT = {
    **LAYOUT,
    ("tcp_sock", "bytes_received"): ("fg_tcp", "bytes_received", "unsigned long long"),
    ("tcp_sock", "bytes_sent"): ("fg_tcp", "bytes_sent", "unsigned long long"),
    ("tcp_sock", "bytes_acked"): ("fg_tcp", "bytes_acked", "unsigned long long"),
}
# wire formats (RFC 791, RFC 9293) and struct sockaddr_in: the same on every kernel
_WIRE = """
struct fg_iphdr { unsigned char version_ihl; unsigned char tos; unsigned short len; unsigned short id;
  unsigned short frag; unsigned char ttl; unsigned char protocol; unsigned short check; unsigned int saddr;
  unsigned int daddr; };
struct fg_tcphdr { unsigned short source; unsigned short dest; unsigned int seq; unsigned int ack;
  unsigned char offset; unsigned char flags; };
struct fg_sin { unsigned short family; unsigned short port; unsigned int addr; };
"""


def offsets(layout: dict[tuple[str, str], tuple[str, str, str]] = LAYOUT, timeout: float = 10.0,
            ) -> dict[tuple[str, str], int]:
    """Each layout member's byte offset in this kernel, from its BTF (pahole)."""
    classes = sorted({c for c, _ in layout})
    return parse_pahole(subprocess.run(["pahole", "-C", ",".join(classes), "/sys/kernel/btf/vmlinux"],
                                       check=False, capture_output=True, text=True, timeout=timeout).stdout, layout)


def parse_pahole(out: str, layout: dict[tuple[str, str], tuple[str, str, str]] = LAYOUT,
                 ) -> dict[tuple[str, str], int]:
    """The layout's members' offsets in pahole's listing (`type name; /* offset size */`): the
    first listing of a member counts (a union lists some twice)."""
    found: dict[tuple[str, str], int] = {}
    current = ""
    for line in out.splitlines():
        opening = re.match(r"^struct (\w+) \{", line)
        if opening:
            current = opening.group(1)
            continue
        member = re.search(r"[\s*](\w+)(?:\[\d+\])?;\s+/\*\s+(\d+)(?::\s*\d+)?\s+\d+\s+\*/", line)
        if member and (current, member.group(1)) in layout:
            found.setdefault((current, member.group(1)), int(member.group(2)))
    missing = sorted(f"{c}.{m}" for c, m in layout if (c, m) not in found)
    if missing:
        raise RuntimeError(f"this kernel's BTF has no {', '.join(missing)} (pahole)")
    return found


def declarations(found: dict[tuple[str, str], int],
                 layout: dict[tuple[str, str], tuple[str, str, str]] = LAYOUT) -> str:
    """The script's structs: each layout member at its offset, padding before it."""
    structs: dict[str, list[tuple[int, str, str]]] = {}
    for key, (struct, name, ctype) in layout.items():
        structs.setdefault(struct, []).append((found[key], name, ctype))
    sizes = {"unsigned char": 1, "unsigned short": 2, "unsigned int": 4, "unsigned long long": 8,
             "struct fg_ns": 0}  # fg_ns: last
    text = []
    for struct in ("fg_ns", "fg_net", "fg_sock", "fg_dev", "fg_skb", "fg_tcp"):  # each before its use
        if struct not in structs:
            continue
        members, at = [], 0
        for offset, name, ctype in sorted(structs[struct]):
            if offset > at:
                members.append(f"char _{at}[{offset - at}];")
            members.append(f"{ctype}{'' if ctype.endswith('*') else ' '}{name};")
            at = offset + (8 if ctype.endswith("*") else sizes[ctype])
        text.append(f"struct {struct} {{ {' '.join(members)} }};")
    return "\n".join(text) + _WIRE


_PROBES = {
    "tcp_send_reset": """
tracepoint:tcp:tcp_send_reset {
  $ns = args->skaddr != 0 ? SKNS(args->skaddr) : ((struct fg_skb *)args->skbaddr)->dev->net->ns.inum;
  $sa = (struct fg_sin *)args->saddr; $da = (struct fg_sin *)args->daddr;
  if (WANTED) {LIVE_SEND printf("E tcp_send_reset %llu %d %u %llx %d %d %s %d %s %dSEND_FMT\\n", nsecs, cpu, $ns, args->skaddr,
    args->state, RSTREASON, ntop($sa->addr), PORT($sa->port), ntop($da->addr),
    PORT($da->port)SEND_ARGS); }
}""",
    "tcp_receive_reset": """
tracepoint:tcp:tcp_receive_reset {
  $ns = SKNS(args->skaddr);
  if (WANTED) { printf("E tcp_receive_reset %llu %d %u %llx %d %s %d %s %dRECEIVE_FMT\\n", nsecs, cpu, $ns, args->skaddr,
    ((struct fg_sock *)args->skaddr)->state, ntop(args->saddr), args->sport, ntop(args->daddr),
    args->dportRECEIVE_ARGS); }
}""",
    "inet_sock_set_state": """
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  $ns = SKNS(args->skaddr);
  if (WANTED) { printf("E inet_sock_set_state %llu %d %u %llx %d %d %s %d %s %d\\n", nsecs, cpu, $ns,
    args->skaddr, args->oldstate, args->newstate, ntop(args->saddr), args->sport, ntop(args->daddr), args->dport); }
}""",
    "inet_sk_error_report": """
tracepoint:sock:inet_sk_error_report /args->protocol == 6 && args->error != 0/ {
  printf("E inet_sk_error_report %llu %d 0 0 %d %s %d %s %d\\n", nsecs, cpu, args->error, ntop(args->saddr),
    args->sport, ntop(args->daddr), args->dport);
}""",
    "kfree_skb": """
tracepoint:skb:kfree_skb /args->reason > 1 && args->protocol == 0x0800/ {
  $skb = (struct fg_skb *)args->skbaddr;
  $rx = (struct fg_sock *)RXSK;
  $ns = $skb->dev != 0 ? $skb->dev->net->ns.inum : ($rx != 0 ? $rx->net->ns.inum
        : ($skb->sk != 0 ? $skb->sk->net->ns.inum : 0));
  $ip = (struct fg_iphdr *)($skb->head + $skb->network_header);
  // 17, AF_PACKET: a copy held by a packet socket (tcpdump's, the lab's taps), not the stack's drop
  $copy = $skb->sk != 0 ? $skb->sk->family == 17 : 0;
  if (WANTED && $ns != 0 && !$copy && $ip->protocol == 6) {
    $th = (struct fg_tcphdr *)($skb->head + $skb->transport_header);
    printf("E kfree_skb %llu %d %u %llx %d %s %d %s %d %d %u %s\\n", nsecs, cpu, $ns, args->skbaddr, args->reason,
      ntop($ip->saddr), PORT($th->source), ntop($ip->daddr), PORT($th->dest), $th->flags,
      $th->seq, ksym(args->location));
  }KFREE_ELSE
}""",
}
# the lab's: every other drop the filter let through, by its address, for lab/witness.py to
# match ftrace's record against (a drop bpftrace did not print is then one it was never given)
_KFREE_ELSE = """ else { printf("K kfree_skb %llu %d %llx\\n", nsecs, cpu, args->skbaddr); }"""
# the live mode's additions to tcp_send_reset: the segment a RST answers (tcp_v4_send_reset()
# in net/ipv4/tcp_ipv4.c is given it; tcp_send_active_reset() in net/ipv4/tcp_output.c is not,
# and its socket is a full one whose byte counts tell what the connection carried)
_LIVE_SEND = """
    $skb0 = args->skbaddr; $sk0 = args->skaddr;
    $aflags = 0; $alen = 0; $rcvd = (uint64)0; $sent = (uint64)0;
    if ($skb0 != 0) {
      $askb = (struct fg_skb *)$skb0;
      $aip = (struct fg_iphdr *)($askb->head + $askb->network_header);
      $ath = (struct fg_tcphdr *)($askb->head + $askb->transport_header);
      $aflags = $ath->flags;
      $alen = PORT($aip->len) - ($aip->version_ihl & 0xf) * 4 - ($ath->offset >> 4) * 4;
    } else if ($sk0 != 0) {
      $rcvd = ((struct fg_tcp *)$sk0)->bytes_received;
      $sent = ((struct fg_tcp *)$sk0)->bytes_sent;
    }"""
# the live lines' tails: (format, arguments), each in the line's own printf (one record per
# line: bpftrace reads each CPU's buffer in turn, and two printfs of one probe could be split)
_LIVE_SEND_TAIL = (f"{LIVE_MARK}%d %d %llu %llu %d %s\\n%s|",
                   f", $aflags, $alen, $rcvd, $sent, pid, comm, kstack({STACK_DEPTH})")
_LIVE_RECEIVE_TAIL = (f"{LIVE_MARK}%llu %llu %llu",
                      ", " + ", ".join(f"((struct fg_tcp *)args->skaddr)->{m}"
                                       for m in ("bytes_received", "bytes_sent", "bytes_acked")))
# the fields each probe reads from its event (the kernel must have them)
NEEDS = {"tcp_send_reset": ("skbaddr", "skaddr", "state", "saddr", "daddr"),
         "tcp_receive_reset": ("skaddr", "sport", "dport", "saddr", "daddr"),
         "inet_sock_set_state": ("skaddr", "oldstate", "newstate", "protocol", "saddr", "daddr"),
         "inet_sk_error_report": ("error", "protocol", "saddr", "daddr"),
         "kfree_skb": ("skbaddr", "location", "protocol", "reason")}
# fields read where the kernel has them; without one, its value is printed as -1 and decoded
# as None (the lab's claims that need it are not applicable there: lab/trace.py)
OPTIONAL = {"tcp_send_reset": ("reason",)}  # tcp_send_reset's reason: Linux 6.10 and later
_HEAD = """
BEGIN { printf("R ready\\n"); }
"""


def script(events: list[str], home: int, layout: str, rx_sk: bool = True, rst_reason: bool = True,
           live: bool = False, only: tuple[int, ...] = (), witnessed: bool = False) -> str:
    """The bpftrace program for these events.

    home: the network namespace whose events are left out (the lab's machine itself), 0 for
    none; only: the namespaces watched, all when empty (live, --netns); rx_sk: kfree_skb has
    that field (the socket that dropped the packet; 6.12 and later); rst_reason: tcp_send_reset
    has its reason (6.10 and later); live: the live mode's additions (the layout must be
    declarations(..., LIVE_LAYOUT)); witnessed: a `K` line for each drop not printed as an
    event (the lab's ftrace witness matches them, lab/witness.py)."""
    text = layout + _HEAD + "".join(_PROBES[e] for e in events)
    wanted = [f"$ns != {home}"] if home else []
    if only:
        wanted.append("(" + " || ".join(f"$ns == {n}" for n in only) + ")")
    text = text.replace("WANTED", " && ".join(wanted) or "1")
    text = text.replace("RXSK", "args->rx_sk" if rx_sk else "0")
    text = text.replace("RSTREASON", "args->reason" if rst_reason else "-1")
    for marker, (fmt, args) in (("SEND", _LIVE_SEND_TAIL), ("RECEIVE", _LIVE_RECEIVE_TAIL)):
        text = text.replace(f"{marker}_FMT", fmt if live else "").replace(f"{marker}_ARGS", args if live else "")
    text = text.replace("LIVE_SEND", _LIVE_SEND if live else "")
    text = text.replace("KFREE_ELSE", _KFREE_ELSE if witnessed else "")
    text = re.sub(r"SKNS\(([^()]*)\)", r"((struct fg_sock *)\1)->net->ns.inum", text)
    return re.sub(r"PORT\(([^()]*)\)", lambda m: "(" + PORT.replace("$P", m.group(1)) + ")", text)


def in_tracefs(command: str) -> list[str]:
    """argv running a shell command with tracefs mounted, in a mount namespace of its own
    (nothing is left mounted on the machine); it exits 3 if tracefs cannot be mounted."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"mountpoint -q {TRACEFS} || mount -t tracefs nodev {TRACEFS} || exit 3; {command}"]


def symbols(print_fmt: str) -> dict[str, dict[int, str]]:
    """Each field's numbers -> names, from an event format's __print_symbolic() tables:
    the names the kernel itself prints (TCP_LISTEN, NO_SOCKET, TCP_LISTEN_OVERFLOW...)."""
    found: dict[str, dict[int, str]] = {}
    for fieldname, table in re.findall(r"__print_symbolic\(REC->(\w+),((?:\s*\{\s*\d+,\s*\"[^\"]*\"\s*\},?)+)",
                                       print_fmt):
        found[fieldname] = {int(n): name for n, name in re.findall(r"\{\s*(\d+),\s*\"([^\"]*)\"\s*\}", table)}
    if "REC->state ?" in print_fmt:  # tcp_send_reset prints a state of 0 (no socket) as UNKNOWN
        found.setdefault("state", {})[0] = "UNKNOWN"
    return found


class NoTracefs(RuntimeError):
    """tracefs is not mounted and cannot be."""


def kernel_formats(timeout: float = 10.0) -> dict[str, Any]:
    """What this kernel's tracepoints offer, from their formats in tracefs:

        {"events": [usable events], "names": {event: {field: {number: name}}},
         "missing": {event: why}, "lacking": {event: [optional fields absent]},
         "reasons": {event: [the reasons its enum names]}, "fields": {event: {field names}}}

    Raises NoTracefs when tracefs cannot be mounted."""
    paths = " ".join(f"{TRACEFS}/events/{FORMATS[e]}/format" for e in EVENTS)
    probe = subprocess.run(in_tracefs(f"for f in {paths}; do echo \"== $f\"; cat \"$f\" 2>/dev/null; done"),
                           check=False, capture_output=True, text=True, timeout=timeout)
    if probe.returncode == 3:
        raise NoTracefs(f"tracefs cannot be mounted: {probe.stderr.strip()}")
    formats = dict(re.findall(r"== \S+/events/\w+/(\w+)/format\n(.*?)(?=\n== |\Z)", probe.stdout, re.DOTALL))
    fields = {e: set(re.findall(r"field:[^;]*?(\w+)(?:\[\d+\])?;", formats.get(e, ""))) for e in EVENTS}
    found: dict[str, Any] = {"events": [], "names": {}, "missing": {}, "fields": fields}
    for event in EVENTS:
        text = formats.get(event, "")
        lacking = [f for f in NEEDS[event] if f not in fields[event]]
        if not text.strip():
            found["missing"][event] = "this kernel has no such tracepoint"
        elif lacking:
            found["missing"][event] = f"this kernel's {event} has no field {', '.join(lacking)}"
        else:
            found["events"].append(event)
            found["names"][event] = symbols(text.partition("print fmt:")[2])
            absent = [f for f in OPTIONAL.get(event, ()) if f not in fields[event]]
            if absent:
                found.setdefault("lacking", {})[event] = absent
    names = found["names"]
    # the reasons this kernel knows, by name (its own enums)
    found["reasons"] = {e: sorted(set(names[e].get("reason", {}).values()))
                        for e in ("tcp_send_reset", "kfree_skb") if e in names
                        and "reason" not in found.get("lacking", {}).get(e, [])}
    if "tcp_send_reset" in names:  # its states are printed by macro names: the numbers are these
        states = names.get("inet_sock_set_state", {}).get("newstate", {})
        names["tcp_send_reset"]["state"] = {**states, **names["tcp_send_reset"].get("state", {})}
    return found


def split(line: str) -> tuple[tuple[str, ...], list[str]]:
    """An `E ...` line without its `E `: the lab's fields, and the live mode's (after ` ~ `;
    the last, comm, may hold spaces)."""
    base, mark, extra = line.partition(LIVE_MARK)
    fields = tuple(base.split(" "))
    if not mark:
        return fields, []
    return fields, extra.split(" ", 5 if fields[0] == "tcp_send_reset" else 2)


def decode(e: tuple[str, ...], names: dict[str, dict[str, dict[int, str]]], host: str = "",
           flag_names: Callable[[int], str] | None = None) -> dict[str, Any]:
    """One event as the lab publishes it: {event, t_ns, host, socket/state/reason..., src,
    sport, dst, dport}, numbers named as the kernel names them; a dropped segment's flags
    spelled by flag_names (tcpdump's spelling, capture.flag_text, by default)."""
    flag_text = flag_names or capture.flag_text

    name, t, _cpu, _ns, sk, *rest = e
    out: dict[str, Any] = {"event": name, "t_ns": int(t), "host": host}
    table = names.get(name, {})

    def named(fieldname: str, value: str) -> str:
        return table.get(fieldname, {}).get(int(value), value)

    if name == "tcp_send_reset":
        state, reason, *flow = rest
        out.update(socket=sk if sk != "0" else None, state=named("state", state),
                   reason=None if reason == "-1" else named("reason", reason))
    elif name == "tcp_receive_reset":
        state, *flow = rest
        states = names.get("inet_sock_set_state", {}).get("newstate", {})
        out.update(socket=sk, state=states.get(int(state), state))
    elif name == "inet_sock_set_state":
        old, new, *flow = rest
        out.update(socket=sk, oldstate=named("oldstate", old), newstate=named("newstate", new))
    elif name == "inet_sk_error_report":
        error, *flow = rest
        out.update(error=int(error), errno=errno.errorcode.get(int(error), error))
    else:  # kfree_skb
        reason, *flow = rest
        out.update(reason=named("reason", reason))
        flow, extra = flow[:4], flow[4:]
        out.update(flags=flag_text(int(extra[0])), seq=int.from_bytes(int(extra[1]).to_bytes(4, "little"), "big"),
                   location=extra[2])
    saddr, sport, daddr, dport = flow[:4]
    out.update(src=saddr, sport=int(sport), dst=daddr, dport=int(dport))
    return out


def decode_live(fields: tuple[str, ...], extra: list[str], stack: list[str]) -> dict[str, Any]:
    """The live mode's additions to an event (split()'s second part, and the stack's frames)."""
    if fields[0] == "tcp_send_reset" and len(extra) >= 5:
        return {"answered_flags": int(extra[0]), "answered_len": int(extra[1]), "bytes_received": int(extra[2]),
                "bytes_sent": int(extra[3]), "pid": int(extra[4]), "comm": extra[5] if len(extra) > 5 else "",
                "stack": stack}
    if fields[0] == "tcp_receive_reset" and len(extra) >= 3:
        return {"bytes_received": int(extra[0]), "bytes_sent": int(extra[1]), "bytes_acked": int(extra[2])}
    return {}


def recursion_misses(pid: int) -> int:
    """How many times the kernel skipped one of bpftrace's programs (process pid) so far: a
    tracepoint that fires while a kprobe or tracepoint BPF program already runs on the same CPU
    (a softirq's packet drop on a timer tick that interrupted a probe in process context) is not
    run, only counted (trace_call_bpf(), kernel/trace/bpf_trace.c: bpf_prog_active), in each
    program's recursion_misses (/proc/PID/fdinfo of its file descriptor). Only kprobe and
    perf-event tracepoint programs, such as bpftrace 0.17's `tracepoint:` probes, take
    bpf_prog_active; the miss is counted for the programs of the tracepoint that was skipped."""
    total = 0
    try:
        names = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return 0
    for name in names:
        try:
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                info = f.read()
        except OSError:
            continue
        if "prog_id:" in info:
            found = re.search(r"^recursion_misses:\s+(\d+)", info, re.MULTILINE)
            total += int(found.group(1)) if found else 0
    return total
