#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets from testdata/ and a few hand-made
inputs (re-run after adding test cases; the fuzzer adds its own finds beside them)."""
import hashlib, json, os, struct

ROOT = os.path.dirname(os.path.abspath(__file__))
TD = os.path.join(ROOT, '..', 'testdata')
APPLETS = ['bridge', 'loopback', 'ptp', 'static', 'tuning']  # order of targets.rs
COMMANDS = ['ADD', 'CHECK', 'VERSION', 'STATUS']

def put(target, data):
    d = os.path.join(ROOT, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'seed-' + hashlib.sha1(data).hexdigest()[:16]), 'wb') as f:
        f.write(data)

def harness(applet, cmd, args, stdin):
    put('harness', bytes([APPLETS.index(applet), COMMANDS.index(cmd)]) + args.encode() + b'\n' + stdin)

ipam = {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": "/nonexistent/fuzz"}
base = {
    'bridge': {"cniVersion": "1.0.0", "name": "n", "type": "bridge", "bridge": "b0", "isGateway": True, "ipam": ipam},
    'ptp': {"cniVersion": "1.0.0", "name": "n", "type": "ptp", "ipMasq": True, "ipam": ipam},
    'loopback': {"cniVersion": "1.0.0", "name": "n", "type": "loopback"},
    'static': {"cniVersion": "1.0.0", "name": "n", "type": "static",
               "ipam": {"type": "static", "addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}],
                        "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.10.0.254"]}}},
    'tuning': {"cniVersion": "1.0.0", "name": "n", "type": "tuning", "mtu": 1400, "sysctl": {"net.core.somaxconn": "500"},
               "prevResult": {"interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": [{"address": "10.0.0.2/24", "interface": 0}]}},
}
for a, c in base.items():
    for cmd in COMMANDS:
        harness(a, cmd, '', json.dumps(c).encode())
for case in json.load(open(os.path.join(TD, 'malformed-applets.json'))):
    a = case['plugin']
    if a not in APPLETS:
        continue
    c = dict(base[a])
    for k, v in (case.get('conf') or {}).items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    harness(a, case.get('command', 'ADD'), case.get('args', ''), json.dumps(c).encode())
    if case.get('args'):
        put('cni_args', case['args'].encode())
for case in json.load(open(os.path.join(TD, 'malformed-harness.json'))):
    if 'stdin' in case:
        harness('bridge', 'ADD', case.get('set', {}).get('CNI_ARGS', ''), case['stdin'].encode())
    a = case.get('set', {}).get('CNI_ARGS')
    if a:
        put('cni_args', a.encode())
for a in ['IP=10.0.0.2;MAC=0a:58:0a:00:00:02', 'IgnoreUnknown=1;K8S_POD_NAME=x', 'A=B=C', '=', ';;']:
    put('cni_args', a.encode())

results = [
    {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mac": "0a:58:0a:00:00:02", "sandbox": "/run/netns/x"}],
     "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0}, {"address": "fd00::2/64"}],
     "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1400, "table": 5, "scope": 0, "priority": 3}],
     "dns": {"nameservers": ["10.0.0.1"], "domain": "x", "search": ["a"], "options": ["ndots:5"]}},
    {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0"}], "ips": [{"version": "4", "address": "10.0.0.2/24", "interface": 0}]},
    {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24", "gateway": "10.0.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
     "ip6": {"ip": "fd00::2/64"}, "dns": {}},
    {"cniVersion": "1.0.0"},
]
for r in results:
    put('results', json.dumps(r).encode())

def nlmsg(ty, flags, seq, port, payload):
    pad = (-len(payload)) % 4
    return struct.pack('=IHHII', 16 + len(payload), ty, flags, seq, port) + payload + b'\0' * pad

def attr(ty, payload):
    pad = (-len(payload)) % 4
    return struct.pack('=HH', 4 + len(payload), ty) + payload + b'\0' * pad

ifinfo = struct.pack('=BxHiII', 0, 1, 2, 0x1043, 0) + attr(3, b'eth0\0') + attr(4, struct.pack('=I', 1500)) + \
    attr(1, bytes.fromhex('0a580a000002')) + attr(18, attr(1, b'veth\0'))
ifaddr = struct.pack('=BBBBI', 2, 24, 0x80, 0, 2) + attr(2, bytes([10, 0, 0, 2])) + attr(1, bytes([10, 0, 0, 2]))
rtmsg = struct.pack('=BBBBBBBBI', 2, 24, 0, 0, 254, 4, 0, 1, 0) + attr(1, bytes([10, 0, 0, 0])) + attr(4, struct.pack('=I', 2))
nftrule = struct.pack('=BBH', 1, 0, 0) + attr(1, b'nat\0') + attr(2, b'postrouting\0') + attr(3, struct.pack('>Q', 7)) + \
    attr(7, bytes([0, 10]) + b'comment\0')
head = struct.pack('=II', 7, 99)
for p in [ifinfo, ifaddr, rtmsg, nftrule]:
    put('netlink', head + nlmsg(16, 2, 7, 99, p) + nlmsg(3, 2, 7, 99, struct.pack('=i', 0)))
put('netlink', head + nlmsg(2, 0x200, 7, 99, struct.pack('=i', -17) + nlmsg(16, 5, 7, 99, b'')[:16] + attr(1, b'File exists\0')))
put('netlink', head + nlmsg(3, 0x10 | 2, 7, 99, struct.pack('=i', -4)))
put('netlink', head + nlmsg(2, 0, 8, 99, struct.pack('=i', 0)) + nlmsg(2, 0, 9, 99, struct.pack('=i', 0)))
