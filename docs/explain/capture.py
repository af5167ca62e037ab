"""Read a capture as a stream of TCP segments: pcap, pcapng or tcpdump's text.

One job: bytes in, `Segment`s out, in file order, never holding more than one chunk of
the file. Everything else (connections, rules) works on Segments and never sees the format.
Standard library only: the same file runs in the browser under Pyodide.
"""

from __future__ import annotations

import re
import struct
from typing import IO, Iterator, NamedTuple

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128


class ExplainError(Exception):
    """Input that cannot be explained; the message is meant for the user, as is."""


class Segment(NamedTuple):
    number: int          # 1-based, as tcpdump and Wireshark count
    time: float          # seconds, as the capture gives them
    src: str             # address, or host name as pasted text gives it
    dst: str
    sport: int
    dport: int
    flags: int           # FIN|SYN|RST|PSH|ACK... bits
    seq: int
    ack: int
    win: int
    length: int          # TCP payload bytes
    ttl: int | None      # TTL or IPv6 hop limit; None when the text does not say (no -v)
    ip_id: int | None    # IPv4 ID; None for IPv6 or when the text does not say
    options: object      # raw option bytes (pcap) or a tuple of names (text); see option_names()
    relative: bool = False  # text only: seq/ack as tcpdump printed them relative to the flow
    at: str = ""         # text only: the time as the text printed it ("22:18:34.089114")


def flag_text(flags: int) -> str:
    """tcpdump's spelling: S, S., R, R., P., F., FP. ..."""
    out = "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (PSH, "P"), (RST, "R"), (URG, "U"),
                                   (ECE, "E"), (CWR, "W")) if flags & bit)
    return out + "." if flags & ACK else (out or "none")


# tcpdump's names (tcp_option_values in its print-tcp.c)
_OPTION_NAMES = {0: "eol", 1: "nop", 2: "mss", 3: "wscale", 4: "sackOK", 5: "sack", 6: "echo",
                 7: "echoreply", 8: "TS", 11: "cc", 12: "ccnew", 13: "ccecho", 19: "md5", 20: "scps",
                 28: "uto", 29: "tcp-ao", 30: "mptcp", 34: "tfo", 254: "exp"}


def option_names(options: object) -> tuple[str, ...]:
    """The TCP options' names in order, as tcpdump names them."""
    if isinstance(options, tuple):
        return options
    raw: bytes = options  # type: ignore[assignment]
    names, i = [], 0
    while i < len(raw):
        kind = raw[i]
        names.append(_OPTION_NAMES.get(kind, f"opt-{kind}"))
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2:
            break
        i += raw[i + 1]
    return tuple(names)


def has_timestamps(options: object) -> bool:
    """Whether the options carry the timestamp option: "TS" in option_names(options), quicker
    for the layouts Linux sends (nop, nop, TS on data; mss, sackOK, TS on a SYN)."""
    if isinstance(options, tuple):
        return "TS" in options
    raw: bytes = options  # type: ignore[assignment]
    if raw[:4] == b"\x01\x01\x08\x0a" or raw[:2] == b"\x02\x04" and raw[4:8] == b"\x04\x02\x08\x0a":
        return True
    if 8 not in raw:
        return False
    return "TS" in option_names(raw)


def segments(stream: IO[bytes], name: str = "-") -> Iterator[Segment]:
    """Every TCP segment of the capture in `stream` (binary file object), in order.

    Raises ExplainError for input that is no capture, a capture cut short, or text
    without a single tcpdump TCP line."""
    head = stream.read(4)
    if len(head) < 4:
        raise ExplainError(f"{name}: empty or too short to be a capture or tcpdump's text")
    # the reader's own generator, not one wrapping it: a packet passes one frame, not two
    if head in (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1"):
        return _pcap(stream, head, name)
    if head == b"\x0a\x0d\x0d\x0a":
        return _pcapng(stream, head, name)
    return _text(stream, head, name)


# -- binary captures -------------------------------------------------------------------

_CHUNK = 1 << 20
_LINK_ETHERNET, _LINK_RAW, _LINK_SLL, _LINK_SLL2, _LINK_NULL, _LINK_LOOP = 1, 101, 113, 276, 0, 108
_LINK_RAW_ALT = {12, 14, 228, 229}
_LINK_NAMES = {_LINK_ETHERNET: "Ethernet", _LINK_RAW: "raw IP", _LINK_SLL: "Linux cooked",
               _LINK_SLL2: "Linux cooked v2", _LINK_NULL: "BSD loopback", _LINK_LOOP: "OpenBSD loopback"}


def _ip_offset(link: int, buf: bytes, at: int, caplen: int) -> int:
    """Offset of the IP header in the frame at buf[at:at+caplen], or -1 if not IP."""
    if link == _LINK_ETHERNET:
        off, etype = 12, 0
        while off + 2 <= caplen:
            etype = (buf[at + off] << 8) | buf[at + off + 1]
            if etype in (0x8100, 0x88A8, 0x9100):  # VLAN tags
                off += 4
                continue
            break
        return off + 2 if etype in (0x0800, 0x86DD) else -1
    if link == _LINK_RAW or link in _LINK_RAW_ALT:
        return 0
    if link == _LINK_SLL:
        return 16 if caplen >= 16 and buf[at + 14:at + 16] in (b"\x08\x00", b"\x86\xdd") else -1
    if link == _LINK_SLL2:
        return 20 if caplen >= 20 and buf[at:at + 2] in (b"\x08\x00", b"\x86\xdd") else -1
    if link in (_LINK_NULL, _LINK_LOOP):
        return 4
    return -1


def _ipv6_text(raw: bytes) -> str:
    words = struct.unpack("!8H", raw)
    # RFC 5952: longest run (>1) of zero words becomes '::'
    best, run = (0, 0), (0, 0)
    for i, w in enumerate(words):
        run = (run[0], run[1] + 1) if w == 0 and run[1] and run[0] + run[1] == i else ((i, 1) if w == 0 else (0, 0))
        if run[1] > best[1]:
            best = run
    if best[1] > 1:
        left = ":".join(f"{w:x}" for w in words[:best[0]])
        right = ":".join(f"{w:x}" for w in words[best[0] + best[1]:])
        return f"{left}::{right}"
    return ":".join(f"{w:x}" for w in words)


class _Decoder:
    """Turns frames into Segments; caches address strings (few hosts, many packets)."""

    def __init__(self) -> None:
        self.names: dict[bytes, str] = {}
        self.number = 0

    def addr(self, raw: bytes) -> str:
        text = self.names.get(raw)
        if text is None:
            text = ".".join(map(str, raw)) if len(raw) == 4 else _ipv6_text(raw)
            self.names[raw] = text
        return text

    def frame(self, link: int, buf: bytes, at: int, caplen: int, t: float) -> Segment | None:
        self.number += 1
        ip = _ip_offset(link, buf, at, caplen)
        if ip < 0:
            return None
        p = at + ip
        end = at + caplen
        if p >= end:
            return None
        version = buf[p] >> 4
        if version == 4:
            if p + 20 > end:
                return None
            ihl = (buf[p] & 15) * 4
            total, ip_id, frag, ttl, proto = struct.unpack_from("!2xHHHBB", buf, p)
            if proto != 6 or frag & 0x1FFF:
                return None
            src, dst = buf[p + 12:p + 16], buf[p + 16:p + 20]
            tcp = p + ihl
            ip_end = min(end, p + total) if total else end
        elif version == 6:
            if p + 40 > end:
                return None
            plen, proto, ttl = struct.unpack_from("!4xHBB", buf, p)
            src, dst = buf[p + 8:p + 24], buf[p + 24:p + 40]
            tcp, ip_id = p + 40, None
            while proto in (0, 43, 60) and tcp + 8 <= end:  # hop-by-hop, routing, destination options
                proto, tcp = buf[tcp], tcp + 8 + buf[tcp + 1] * 8
            if proto != 6:
                return None
            ip_end = min(end, p + 40 + plen) if plen else end
        else:
            return None
        if tcp + 20 > end:
            return None
        sport, dport, seq, ack, off, flags, win = struct.unpack_from("!HHIIBBH", buf, tcp)
        hlen = (off >> 4) * 4
        return Segment(self.number, t, self.addr(src), self.addr(dst), sport, dport, flags, seq, ack,
                       win, max(0, ip_end - tcp - hlen), ttl, ip_id, buf[tcp + 20:min(tcp + hlen, end)])


def _truncated(name: str, number: int) -> ExplainError:
    return ExplainError(f"{name}: the capture is cut short in packet {number} (truncated file?)")


def _pcap(stream: IO[bytes], head: bytes, name: str) -> Iterator[Segment]:
    endian = ">" if head in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d") else "<"
    scale = 1e-9 if head in (b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1") else 1e-6
    rest = stream.read(20)
    if len(rest) < 20:
        raise ExplainError(f"{name}: the pcap file header is cut short (truncated file?)")
    link = struct.unpack(endian + "16xI", rest)[0] & 0x0FFFFFFF
    if link not in _LINK_NAMES and link not in _LINK_RAW_ALT:
        raise ExplainError(f"{name}: link type {link} is not one this tool reads "
                           "(Ethernet, raw IP, Linux cooked, loopback)")
    unpack_record = struct.Struct(endian + "IIII").unpack_from
    decode = _Decoder()
    addr = decode.addr
    new = tuple.__new__
    # the common frame, unpacked in one call: Ethernet, IPv4 without options, TCP (checked below)
    fast = _ETH_IPV4_TCP if link == _LINK_ETHERNET else None
    pairs: dict[bytes, tuple[str, str]] = {}   # 8 address bytes -> (source, destination) text
    number = 0
    buf, at, size = b"", 0, 0
    while True:
        if size - at < 16:
            more = stream.read(_CHUNK)
            if not more:
                if size - at:
                    raise _truncated(name, number + 1)
                break
            buf, at = buf[at:] + more, 0
            size = len(buf)
            continue
        sec, frac, caplen, _ = unpack_record(buf, at)
        if caplen > 262144 * 4:
            raise ExplainError(f"{name}: packet {number + 1} claims {caplen} bytes: "
                               "the file is damaged or not a pcap")
        end = at + 16 + caplen
        if size < end:
            more = stream.read(max(_CHUNK, caplen + 16))
            if not more:
                raise _truncated(name, number + 1)
            buf, at = buf[at:] + more, 0
            size = len(buf)
            continue
        if fast is not None and caplen >= 54:
            (etype, version_ihl, total, ip_id, frag, ttl, proto, hosts, sport, dport, seq, ack, off,
             flags, win) = fast(buf, at + 16)
            if etype == 0x0800 and version_ihl == 0x45 and proto == 6 and not frag & 0x1FFF:
                number += 1
                tcp = at + 50
                options_end = tcp + ((off >> 4) << 2)
                payload_end = at + 30 + total
                if payload_end > end:
                    payload_end = end
                length = payload_end - options_end
                if options_end > end:
                    options_end = end
                pair = pairs.get(hosts)
                if pair is None:
                    pairs[hosts] = pair = (addr(hosts[:4]), addr(hosts[4:]))
                yield new(Segment, (number, sec + frac * scale, pair[0], pair[1], sport, dport, flags, seq,
                                    ack, win, length if length > 0 else 0, ttl, ip_id,
                                    buf[tcp + 20:options_end] if options_end > tcp + 20 else b"", False, ""))
                at = end
                continue
        decode.number = number
        seg = decode.frame(link, buf, at + 16, caplen, sec + frac * scale)
        number = decode.number
        at = end
        if seg is not None:
            yield seg


_ETH_IPV4_TCP = struct.Struct("!12xHBxHHHBB2x8sHHIIBBH").unpack_from


def _pcapng(stream: IO[bytes], head: bytes, name: str) -> Iterator[Segment]:
    decode = _Decoder()
    interfaces: list[tuple[int, float]] = []  # (link type, seconds per timestamp unit)
    endian = "<"
    first = True
    while True:
        top = head if first else stream.read(4)
        first = False
        if not top:
            return
        rest = stream.read(8)
        if len(top) < 4 or len(rest) < 8:
            raise _truncated(name, decode.number + 1)
        if top == b"\x0a\x0d\x0d\x0a":
            magic = rest[4:8]
            if magic == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif magic == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise ExplainError(f"{name}: a pcapng section header with a bad byte-order magic")
            interfaces = []
        kind = struct.unpack(endian + "I", top)[0]
        length = struct.unpack(endian + "I", rest[:4])[0]
        if length < 12 or length % 4 or length > 1 << 26:
            raise ExplainError(f"{name}: a pcapng block of {length} bytes: the file is damaged")
        body = rest[4:] + stream.read(length - 12)
        if len(body) < length - 8:
            raise _truncated(name, decode.number + 1)
        body = body[:-4]  # trailing length
        if kind == 1:  # interface description
            link = struct.unpack_from(endian + "H", body, 0)[0]
            resolution = 1e-6
            i = 8
            while i + 4 <= len(body):
                code, olen = struct.unpack_from(endian + "HH", body, i)
                if code == 0:
                    break
                if code == 9 and olen >= 1:  # if_tsresol
                    r = body[i + 4]
                    resolution = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
                i += 4 + (olen + 3) // 4 * 4
            interfaces.append((link, resolution))
        elif kind in (6, 2):  # enhanced packet, obsolete packet
            iface, hi, lo, caplen = _epb_fields(endian, kind, body)
            if iface >= len(interfaces):
                raise ExplainError(f"{name}: a packet names interface {iface}, never described")
            link, resolution = interfaces[iface]
            ts = ((hi << 32) | lo) * resolution
            seg = decode.frame(link, body, 20, min(caplen, len(body) - 20), ts)
            if seg is not None:
                yield seg
        elif kind == 3:  # simple packet: no timestamp
            if not interfaces:
                raise ExplainError(f"{name}: a packet before any interface description")
            seg = decode.frame(interfaces[0][0], body, 4, len(body) - 4, 0.0)
            if seg is not None:
                yield seg


def _epb_fields(endian: str, kind: int, body: bytes) -> tuple[int, int, int, int]:
    if kind == 6:
        return struct.unpack_from(endian + "IIII", body, 0)
    iface, _drops, hi, lo, caplen = struct.unpack_from(endian + "HHIII", body, 0)
    return iface, hi, lo, caplen


# -- tcpdump's text --------------------------------------------------------------------
# Lines as `tcpdump -r FILE` prints them, with or without -n/-nn/-S/-v/-tttt... One record:
#   TIME IP[6] [(-v details)] SRC.PORT > DST.PORT: Flags [F], seq N[:M], ack N, win N, options [...], length N
# With -v (IPv4) the details end the first line and the addresses start the next one.

_TIME = r"(?P<time>(?:\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d(?:\.\d+)?|\d+(?:\.\d+)?)"
_HEAD = re.compile(_TIME + r"\s+(?:\S+\s+(?:In|Out|B|M|P)\s+)?(?P<ip>IP6?)\b(?P<rest>.*)$")
_FLOW = re.compile(r"(?P<src>\S+)\.(?P<sport>[\w-]+) > (?P<dst>\S+)\.(?P<dport>[\w-]+): Flags \[(?P<flags>[^\]]*)\](?P<tail>.*)$")
_TTL = re.compile(r"\b(?:ttl|hlim) (\d+)")
_ID = re.compile(r"\bid (\d+)")
_SEQ = re.compile(r"\bseq (\d+)(?::(\d+))?")
_ACK = re.compile(r"\back (\d+)")
_WIN = re.compile(r"\bwin (\d+)")
_LEN = re.compile(r"\blength (\d+)")
_OPTS = re.compile(r"options \[([^\]]*)\]")
_FLAG_BITS = {"S": SYN, "F": FIN, "R": RST, "P": PSH, ".": ACK, "U": URG, "E": ECE, "W": CWR}


def _port(text: str) -> int:
    if text.isdigit():
        return int(text)
    return _SERVICES.get(text, 0) or _fallback_port(text)


def _fallback_port(text: str) -> int:
    # a name this table lacks still names one port: keep the flow apart from the others
    return 65536 + (sum(text.encode()) * 131 + len(text)) % 1_000_000


# without -n tcpdump prints a port by its name in the services database (recorded: tcpdump 4.99.3
# -r closed-port.pcap prints 192.0.2.2.http-alt, with -n 192.0.2.2.8080); the usual names, and
# some only in IANA's fuller list that other systems install as /etc/services (ddi-tcp-1)
_SERVICES = {"ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53,
             "http": 80, "pop3": 110, "sunrpc": 111, "imap": 143, "bgp": 179, "ldap": 389,
             "https": 443, "microsoft-ds": 445, "submission": 587, "ldaps": 636, "imaps": 993,
             "pop3s": 995, "mysql": 3306, "postgresql": 5432, "http-alt": 8080, "webcache": 8080,
             "discard": 9, "echo": 7, "daytime": 13, "sunrpc-tcp": 111, "nfs": 2049,
             "redis": 6379, "amqp": 5672, "ircd": 6667, "x11": 6000, "rsync": 873, "socks": 1080,
             "squid": 3128, "openvpn": 1194, "kerberos": 88, "rtsp": 554, "sip": 5060,
             "xmpp-client": 5222, "memcache": 11211, "ddi-tcp-1": 8888, "omniorb": 8088,
             "radan-http": 8088, "zabbix-agent": 10050, "git": 9418}


def _text_time(text: str) -> float:
    if ":" not in text:
        return float(text)
    clock = text.split(" ")[-1]
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _text(stream: IO[bytes], head: bytes, name: str) -> Iterator[Segment]:
    sample = head + stream.read(4096)
    if b"\x00" in sample or _binary_share(sample) > 0.1:
        raise ExplainError(f"{name}: not a capture: neither pcap, pcapng nor tcpdump's text "
                           f"(it starts with bytes {sample[:8].hex(' ')})")
    number, tcp_lines, pending = 0, 0, ""
    absolute = _Absolute()

    def lines() -> Iterator[str]:
        carry = sample
        while True:
            more = stream.read(_CHUNK)
            block = carry + more
            parts = block.split(b"\n")
            carry = parts.pop() if more else b""
            for part in parts:
                yield part.decode("utf-8", "replace").rstrip("\r")
            if not more:
                if carry:
                    yield carry.decode("utf-8", "replace")
                return

    for line in lines():
        stripped = line.strip()
        if not stripped:
            continue
        match = _HEAD.match(stripped) if not line[:1].isspace() else None
        if match:
            number += 1
            rest = match["rest"]
            if _FLOW.search(rest):
                pending = ""
                seg = absolute(_text_segment(number, match, rest))
                if seg is not None:
                    tcp_lines += 1
                    yield seg
            else:
                pending = line  # -v: the addresses follow on the next line
            continue
        if pending and line[:1].isspace():
            match = _HEAD.match(pending.strip())
            pending = ""
            if match and _FLOW.search(stripped):
                seg = absolute(_text_segment(number, match, match["rest"] + " " + stripped))
                if seg is not None:
                    tcp_lines += 1
                    yield seg
    if not tcp_lines:
        raise ExplainError(f"{name}: no tcpdump TCP line in this text (expected lines such as "
                           "'12:00:00.000001 IP 192.0.2.1.40000 > 192.0.2.2.80: Flags [S], seq 1, ...')")


def _binary_share(sample: bytes) -> float:
    if not sample:
        return 0.0
    odd = sum(1 for b in sample if b < 9 or 13 < b < 32 or b == 127)
    return odd / len(sample)


def _text_segment(number: int, head: re.Match[str], rest: str) -> Segment | None:
    flow = _FLOW.search(rest)
    if flow is None:
        return None
    details = rest[:flow.start()]
    tail = flow["tail"]
    flags = 0
    for c in flow["flags"]:
        flags |= _FLAG_BITS.get(c, 0)
    seq_match = _SEQ.search(tail)
    seq = int(seq_match[1]) if seq_match else None
    length = 0
    if seq_match and seq_match[2]:
        length = int(seq_match[2]) - seq
    len_match = _LEN.search(tail)
    if len_match:
        length = int(len_match[1])
    ack_match = _ACK.search(tail)
    win_match = _WIN.search(tail)
    ttl = _TTL.search(details)
    ip_id = _ID.search(details)
    opts = _OPTS.search(tail)
    names: tuple[str, ...] = ()
    if opts:
        names = tuple(o.split(" ")[0] for o in opts[1].split(",") if o)
    return Segment(number, _text_time(head["time"]), flow["src"], flow["dst"], _port(flow["sport"]),
                   _port(flow["dport"]), flags, -1 if seq is None else seq,
                   int(ack_match[1]) if ack_match else 0, int(win_match[1]) if win_match else 0,
                   length, int(ttl[1]) if ttl else None, int(ip_id[1]) if ip_id else None, names,
                   relative=True, at=head["time"])


class _Absolute:
    """tcpdump prints seq/ack relative (unless -S): the first segment of a flow that carries
    an ACK, and any that also carries SYN, is printed as is and sets both directions' bases
    (its seq, its ack - 1); later ACK-bearing segments print numbers minus those bases;
    segments without ACK print theirs as is (tcp_print() in tcpdump's print-tcp.c, its
    tcp_seq_hash table). A SYN-ACK sent again resets the bases to the same values, so one
    base per flow undoes it. This recognises -S output by numbers that stay near the bases."""

    def __init__(self) -> None:
        self.bases: dict[tuple, list[int]] = {}

    def __call__(self, seg: Segment | None) -> Segment | None:
        if seg is None or not seg.flags & ACK:
            return seg
        fwd = (seg.src, seg.sport, seg.dst, seg.dport)
        rev = (seg.dst, seg.dport, seg.src, seg.sport)
        if fwd in self.bases:
            mine, theirs = self.bases[fwd]
        elif rev in self.bases:
            theirs, mine = self.bases[rev]
        else:
            if seg.seq >= 0:
                self.bases[fwd] = [seg.seq, (seg.ack - 1) % 2**32]
            return seg._replace(relative=False)
        seq, ack = seg.seq, seg.ack
        if _looks_relative(seq, mine) and _looks_relative(ack, theirs):
            seq = -1 if seq < 0 else (mine + seq) % 2**32
            ack = (theirs + ack) % 2**32
        return seg._replace(seq=seq, ack=ack, relative=False)


def _looks_relative(value: int, base: int) -> bool:
    if value < 0:
        return True
    near_base = (value - base) % 2**32 < 1 << 24 or (base - value) % 2**32 < 1 << 24
    return value < 1 << 24 and not (near_base and base < 1 << 24 and value >= base)
