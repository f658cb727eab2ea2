#!/usr/bin/env python3
"""Write a large synthetic pcap for timing `sluice sim NODE --pcap FILE` (BENCHMARKS.md,
"Capture replay").

    python3 tests/tools/replay-capture.py OUT [PACKETS]     (default 1,000,000 packets)

The frames are seeded, so every run writes the same file. They cover each path of the
prefilter: IPv4 and IPv6 UDP/TCP with sources inside and outside the deny prefixes of
`fixtures/default-node.yaml` and `fixtures/prefilter-small.yaml`, one and two VLAN tags,
ARP, and frames cut short in the Ethernet, VLAN, IPv4 and IPv6 headers. Checksums are not
filled in (the prefilter reads none). Stdlib only; nothing here is committed output.
"""

import random
import struct
import sys

SEED = 0x5EED


def mac(i):
    return bytes([2, 0, 0, 0, (i >> 8) & 0xFF, i & 0xFF])


def ipv4(src, dst, proto, payload):
    total = 20 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0, src, dst)
    return hdr + payload


def ipv6(src, dst, proto, payload):
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, src, dst)
    return hdr + payload


def l4(rng, proto, size):
    body = bytes(size)
    if proto == 17:
        return struct.pack("!HHHH", rng.randrange(1024, 65535), 53, 8 + size, 0) + body
    return struct.pack("!HHIIBBHHH", rng.randrange(1024, 65535), 443, 1, 0, 0x50, 0x02, 65535, 0, 0) + body


# Sources: (weight, generator). Deny prefixes come from the two fixtures' lists.
V4_DENY = [
    (192, 0, 2), (198, 51, 100), (203, 0, 113), (10, 13, 7), (10, 1, 2), (172, 16, 9), (192, 168, 1),
]
V6_DENY = [
    bytes.fromhex("20010db80bad0000"), bytes.fromhex("fd00dead00000000"), bytes.fromhex("20010db800000000"),
    bytes.fromhex("fe80000000000000"),
]


def v4_src(rng):
    if rng.random() < 0.3:
        a, b, c = rng.choice(V4_DENY)
        return bytes([a, b, c, rng.randrange(256)])
    # Public space outside every listed prefix.
    return bytes([rng.choice([8, 23, 45, 64, 81, 93, 151, 185]), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])


def v6_src(rng):
    if rng.random() < 0.3:
        return rng.choice(V6_DENY) + rng.randbytes(8)
    return bytes.fromhex("2600") + rng.randbytes(14)


def frame(rng, i):
    eth = mac(i & 0xFFFF) + mac(1)
    kind = rng.random()
    size = rng.choice([0, 18, 64, 200, 512, 1200])
    proto = rng.choice([6, 17])
    if kind < 0.45:
        f = eth + b"\x08\x00" + ipv4(v4_src(rng), bytes([10, 0, 1, 10]), proto, l4(rng, proto, size))
    elif kind < 0.80:
        dst = bytes.fromhex("fd000000000100000000000000000010")
        f = eth + b"\x86\xdd" + ipv6(v6_src(rng), dst, proto, l4(rng, proto, size))
    elif kind < 0.88:
        tags = b"\x81\x00" + struct.pack("!H", 100)
        if rng.random() < 0.5:
            tags = b"\x88\xa8" + struct.pack("!H", 7) + tags
        f = eth + tags + b"\x08\x00" + ipv4(v4_src(rng), bytes([10, 0, 1, 11]), 17, l4(rng, 17, size))
    elif kind < 0.94:
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac(i) + bytes(4) + bytes(6) + bytes(4)
        f = eth + b"\x08\x06" + arp
    else:
        # Cut short somewhere in the headers (also below an Ethernet header).
        full = eth + b"\x08\x00" + ipv4(v4_src(rng), bytes([10, 0, 1, 10]), 17, l4(rng, 17, 8))
        if rng.random() < 0.5:
            full = eth + b"\x86\xdd" + ipv6(v6_src(rng), bytes(16), 17, l4(rng, 17, 8))
        f = full[: rng.randrange(1, 40)]
    return f


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 1_000_000
    rng = random.Random(SEED)
    # A few thousand distinct frames, cycled: enough variety, and the file writes fast.
    pool = [frame(rng, i) for i in range(4096)]
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(n):
            data = pool[(i * 2654435761) % len(pool)]
            f.write(struct.pack("<IIII", i // 1_000_000, i % 1_000_000, len(data), len(data)))
            f.write(data)


if __name__ == "__main__":
    main()
