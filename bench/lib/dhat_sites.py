"""Live heap per idle connection by allocation site, from a DHAT profile (valgrind --tool=dhat):
the bytes live at the profile's peak (t-gmax, with every idle connection open), divided by the
number of connections, grouped by the first frame outside the allocator and the standard
library (the code that asked), with the first frame of the binary's own code on the way (functions inlined into it, such as a
dependency's constructor, are named by the line of ours they were inlined at).
usage: dhat_sites.py DHAT_JSON CONNECTIONS [TOP] [OWN_PREFIX]"""
import json
import re
import sys

path, conns = sys.argv[1], int(sys.argv[2])
top = int(sys.argv[3]) if len(sys.argv) > 3 else 20
own = sys.argv[4] if len(sys.argv) > 4 else "local_proxy::"
d = json.load(open(path))
frames = d["ftbl"]
# Frames that only pass the request on: the allocator, the standard library, the collections.
plumbing = re.compile(
    r"\((library/|unix\.rs|alloc\.rs)|raw_vec|vgpreload|bytes_mut\.rs|vec/mod\.rs|boxed\.rs|"
    r"__rust|__rdl|alloc::|core::|std::|<alloc|hashbrown::raw|\?\?\?"
)


def name(frame):
    frame = re.sub(r"^0x[0-9A-Fa-f]+: ", "", frame)
    frame = re.sub(r"<[^<>]*(<[^<>]*>[^<>]*)*>", "<..>", frame)
    return frame[:100]


sites = {}
for pp in d["pps"]:
    live = pp.get("gb", 0)
    if not live:
        continue
    stack = [frames[i] for i in pp["fs"]]
    asker = next((f for f in stack if not plumbing.search(f)), stack[-1] if stack else "?")
    ours = next((f for f in stack if name(f).startswith(own)), "")
    key = (name(asker), name(ours) if ours != asker else "")
    b, n = sites.get(key, (0, 0))
    sites[key] = (b + live, n + pp.get("gbk", 0))

total = sum(b for b, _ in sites.values())
blocks = sum(n for _, n in sites.values())
per_conn = sum(b for b, n in sites.values() if n >= conns / 2)
print(f"live heap at the peak: {total / conns:,.0f} B in {blocks / conns:.1f} blocks per connection "
      f"({conns} connections; the process's own start-up share included); in sites that hold a block "
      f"for at least every other connection: {per_conn / conns:,.0f} B")
print(f"{'B/conn':>8} {'blocks':>6}  site (first frame outside the allocator)  <-  first frame of {own.rstrip(':')}")
for (asker, ours), (b, n) in sorted(sites.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"{b / conns:8.0f} {n / conns:6.2f}  {asker}" + (f"  <-  {ours}" if ours else ""))
