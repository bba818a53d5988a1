#!/usr/bin/env python3
"""The shape of src/: largest files, longest production functions, and the
module dependency cycles (file-level modules; an edge for every path that
names another module, through `crate::`, `super::` or a child module).

    python3 contrib/structure.py [SRC_DIR]

A function's length runs from its `fn` line to the closing brace at the
same indentation; test modules (`#[cfg(test)] mod ...`) are left out.
"""

import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"

def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)

files = {}
for root, _, names in os.walk(SRC):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(root, n)
            files[module_of(p)] = p
modules = set(files)

def production_lines(text):
    """The lines outside `#[cfg(test)]` modules."""
    out, skip_indent = [], None
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if skip_indent is not None:
            if line.startswith(skip_indent + "}"):
                skip_indent = None
            i += 1
            continue
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*(pub )?mod \w+ \{", lines[i + 1]):
            skip_indent = re.match(r"\s*", lines[i + 1]).group(0)
            i += 2
            continue
        out.append(line)
        i += 1
    return out

FN = re.compile(r"^(\s*)(pub(\([^)]*\))? )?(const )?(async )?(unsafe )?fn (\w+)")

def functions(mod, lines):
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i, len(lines)):
            if lines[j] == indent + "}" or (j == i and line.rstrip().endswith("}")):
                yield (j - i + 1, "::".join(mod), m.group(7))
                break

def resolve(mod, path):
    """The module a `a::b::c` path (as written in `mod`) lands in."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] == "super":
        base = mod[:-1]
        segs = segs[1:]
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    elif segs[0] == "self":
        base, segs = mod, segs[1:]
    elif mod + (segs[0],) in modules:
        base = mod
    else:
        return None
    target = base
    for s in segs:
        if target + (s,) in modules:
            target = target + (s,)
        else:
            break
    return target

PATH = re.compile(r"\b((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"use\s+((?:crate|super|self)(?:::\w+)*)::\{([^;]*)\};", re.S)

edges = {m: set() for m in modules}
all_fns = []
sizes = []
for mod, path in files.items():
    text = open(path).read()
    lines = production_lines(text)
    sizes.append((len(text.split("\n")) - 1, path))
    all_fns.extend(functions(mod, lines))
    # Comments name modules without depending on them.
    body = "\n".join(re.sub(r"//.*", "", l) for l in lines)
    paths = set(PATH.findall(body))
    for prefix, inner in USE_GROUP.findall(body):
        for item in re.split(r",\s*", inner):
            item = item.strip().split(" as ")[0]
            if item and item != "self":
                paths.add(prefix + "::" + item.replace("{", "").strip())
    for p in paths:
        t = resolve(mod, p)
        if t is not None and t != mod and t != mod[: len(t)]:
            edges[mod].add(t)

# Strongly connected components (Tarjan).
index, low, stack, on, comps, n = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = n[0]; n[0] += 1
    stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        comps.append(comp)
sys.setrecursionlimit(10000)
for v in sorted(modules):
    if v not in index:
        strong(v)

print("largest files (lines):")
for size, path in sorted(sizes, reverse=True)[:8]:
    print(f"  {size:5} {path}")
print("longest production functions (lines):")
for length, mod, name in sorted(all_fns, reverse=True)[:10]:
    print(f"  {length:5} {mod}::{name}")
print(f"functions over 80 lines: {sum(1 for f in all_fns if f[0] > 80)}")
cycles = [c for c in comps if len(c) > 1]
print(f"module dependency cycles: {len(cycles)}")
for c in cycles:
    print("  " + " <-> ".join(sorted("::".join(m) or "crate" for m in c)))
