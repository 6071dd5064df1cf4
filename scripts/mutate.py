#!/usr/bin/env python3
"""Mutation check: every curated mutation of the engine, policy and stream
code must make the test suite fail.

Each mutation in scripts/mutations.txt is one small change (a line, at most
a few adjacent lines) that breaks a promise the library makes. It is applied
to a private copy of the tree (build/mutate/src, with its own .build, so the
worktree is never touched and rebuilds are incremental), the copy is built,
and the tests named by the mutation's filter run. A mutation is killed only
when a test fails: one that does not compile is a broken mutation, not a
kill, and fails the check like a survivor does. So does a mutation whose
original text is no longer in its file exactly once (the code moved: the
list must follow it).

    python3 scripts/mutate.py [--fast] [--only NAME,NAME] [--full]
    MUTATE_FULL=1   run the whole suite for every mutation, not its filter
    MUTATE_TIMEOUT  seconds a mutation's test run may take (default 600;
                    a run that hangs counts as killed, marked "timeout")
    MUTATE_LIST     another mutation list (default scripts/mutations.txt)
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST = os.environ.get("MUTATE_LIST") or os.path.join(ROOT, "scripts", "mutations.txt")
WORK = os.path.join(ROOT, "build", "mutate")
SRC = os.path.join(WORK, "src")
LOGS = os.path.join(WORK, "logs")
KEYS = {"name", "file", "from", "to", "tests", "fast", "why"}


def parse(path):
    """Blocks of `key: value` lines separated by blank lines; `#` comments.
    In `from` and `to`, `\\n` stands for a line break (to anchor a change
    on a line whose text is not unique by itself)."""
    muts, cur, errors = [], {}, []
    with open(path) as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines + [""], 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                muts.append(cur)
                cur = {}
            continue
        m = re.match(r"^([a-z]+):\s?(.*)$", line)
        if not m or m.group(1) not in KEYS:
            errors.append(f"{path}:{n}: not a 'key: value' line with a known key: {line!r}")
            continue
        key, value = m.group(1), m.group(2)
        if key in ("from", "to"):
            value = value.replace("\\n", "\n")
        if key == "name":
            cur["line"] = n
        cur[key] = value
    for m in muts:
        missing = [k for k in ("name", "file", "from", "to", "tests") if k not in m]
        if missing:
            errors.append(f"{path}:{m.get('line', '?')}: mutation {m.get('name', '?')} lacks {', '.join(missing)}")
        if m.get("from") == m.get("to"):
            errors.append(f"{path}:{m.get('line', '?')}: mutation {m.get('name', '?')} changes nothing")
    names = [m.get("name") for m in muts]
    for dup in sorted({x for x in names if names.count(x) > 1}):
        errors.append(f"{path}: mutation name {dup} is used twice")
    return muts, errors


def sh(cmd, log, timeout=None):
    """Run cmd in the copy, output to log; (exit code or 'timeout', seconds)."""
    t0 = time.time()
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, cwd=SRC, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            rc = "timeout"
    return rc, time.time() - t0


def sync_copy():
    """Mirror the package (manifest, Sources, Tests, linker) into SRC.
    Files are copied only when their bytes differ and keep their mtime, so
    the copy's .build rebuilds only what changed (rsync is not everywhere)."""
    parts = ("Package.swift", "Sources", "Tests", "linker")
    wanted = set()
    for part in parts:
        top = os.path.join(ROOT, part)
        files = [top] if os.path.isfile(top) else [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
        for src in files:
            rel = os.path.relpath(src, ROOT)
            dst = os.path.join(SRC, rel)
            wanted.add(rel)
            if os.path.exists(dst) and open(src, "rb").read() == open(dst, "rb").read():
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
    for part in parts:
        top = os.path.join(SRC, part)
        if os.path.isdir(top):
            for d, _, fs in os.walk(top):
                for f in fs:
                    if os.path.relpath(os.path.join(d, f), SRC) not in wanted:
                        os.remove(os.path.join(d, f))


def build(log):
    return sh(["swift", "build", "--build-tests"], log)


def test(filter_, log, timeout):
    cmd = ["swift", "test", "--skip-build"]
    if filter_:
        cmd += ["--filter", filter_]
    return sh(cmd, log, timeout)


def failures(log):
    """Failed test names, in order; a crash names the test that was running."""
    text = open(log, errors="replace").read()
    failed = []
    for m in re.finditer(r"Test Case '([^']+)' failed", text):
        if m.group(1) not in failed:
            failed.append(m.group(1))
    executed = [int(x) for x in re.findall(r"Executed (\d+) tests?", text)]
    if not failed:
        started = re.findall(r"Test Case '([^']+)' started", text)
        if started and ("Fatal error" in text or "Exited with" in text or "signal" in text):
            failed.append(started[-1] + " (crashed)")
    return failed, (max(executed) if executed else 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fast", action="store_true", help="only the mutations marked 'fast: yes'")
    ap.add_argument("--only", default="", help="comma-separated mutation names")
    ap.add_argument("--full", action="store_true", default=os.environ.get("MUTATE_FULL") == "1",
                    help="run the whole suite for each mutation (MUTATE_FULL=1)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the filters")
    args = ap.parse_args()
    timeout = int(os.environ.get("MUTATE_TIMEOUT", "600"))

    muts, errors = parse(LIST)
    if errors:
        print("\n".join(errors))
        return 2
    if args.fast:
        muts = [m for m in muts if m.get("fast") == "yes"]
    if args.only:
        want = args.only.split(",")
        unknown = [w for w in want if w not in {m["name"] for m in muts}]
        if unknown:
            print("no such mutation: " + ", ".join(unknown))
            return 2
        muts = [m for m in muts if m["name"] in want]

    start = time.time()
    os.makedirs(LOGS, exist_ok=True)
    sync_copy()

    # Every mutation must still apply: its text exactly once in its file.
    stale = []
    for m in muts:
        path = os.path.join(SRC, m["file"])
        if not os.path.exists(path):
            stale.append((m, f"{m['file']} does not exist"))
            continue
        n = open(path).read().count(m["from"])
        if n != 1:
            where = "not found" if n == 0 else f"found {n} times"
            stale.append((m, f"original text {where} in {m['file']}: {m['from']!r}"))
    for m, why in stale:
        print(f"!! mutation {m['name']} ({os.path.relpath(LIST, ROOT)}:{m['line']}) no longer applies: {why}")
    live = [m for m in muts if m not in [s[0] for s in stale]]

    print(f"== mutate: {len(live)} mutation(s){' (whole suite each)' if args.full else ''}; copy in {os.path.relpath(SRC, ROOT)}")
    rc, secs = build(os.path.join(LOGS, "baseline-build.log"))
    if rc != 0:
        print(f"!! the unmutated tree does not build (see {LOGS}/baseline-build.log)")
        return 1
    print(f"   unmutated build {secs:.0f} s")
    if not args.no_baseline and live:
        # A kill means nothing if the tests fail without the mutation.
        union = None if args.full else "|".join(sorted({m["tests"] for m in live}))
        log = os.path.join(LOGS, "baseline-test.log")
        rc, secs = test(union, log, timeout * 3)
        failed, executed = failures(log)
        if rc != 0:
            print(f"!! the unmutated tree fails its tests ({', '.join(failed) or rc}); see {log}")
            return 1
        print(f"   unmutated tests pass: {executed} test(s) in {secs:.0f} s")

    rows = []
    for m in live:
        path = os.path.join(SRC, m["file"])
        original = open(path).read()
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", m["name"])
        try:
            with open(path, "w") as f:
                f.write(original.replace(m["from"], m["to"], 1))
            t0 = time.time()
            brc, _ = build(os.path.join(LOGS, slug + ".build.log"))
            if brc != 0:
                rows.append((m, "BROKEN", "does not compile (not a kill): see " + os.path.relpath(os.path.join(LOGS, slug + ".build.log"), ROOT), time.time() - t0))
            else:
                log = os.path.join(LOGS, slug + ".test.log")
                trc, _ = test(None if args.full else m["tests"], log, timeout)
                failed, executed = failures(log)
                if trc == "timeout":
                    rows.append((m, "killed", "timeout after %d s" % timeout + (" in " + failed[0] if failed else ""), time.time() - t0))
                elif executed == 0 and trc == 0:
                    rows.append((m, "BROKEN", f"filter '{m['tests']}' runs no test", time.time() - t0))
                elif trc == 0:
                    rows.append((m, "SURVIVED", f"{executed} test(s) passed", time.time() - t0))
                else:
                    shown = ", ".join(failed[:3]) + (f" (+{len(failed) - 3})" if len(failed) > 3 else "")
                    rows.append((m, "killed", shown or f"exit {trc} (see {os.path.relpath(log, ROOT)})", time.time() - t0))
        finally:
            with open(path, "w") as f:
                f.write(original)
        r = rows[-1]
        print(f"   {r[1]:8} {m['name']:34} {r[3]:6.0f} s  {r[2]}", flush=True)

    total = time.time() - start
    width = max([len(m["name"]) for m in muts] + [8])
    lines = [f"{'mutation':{width}}  {'result':8}  {'secs':>5}  test(s) that failed"]
    for m, result, detail, secs in rows:
        lines.append(f"{m['name']:{width}}  {result:8}  {secs:5.0f}  {detail}")
    for m, why in stale:
        lines.append(f"{m['name']:{width}}  {'STALE':8}  {0:5.0f}  no longer applies: {why}")
    bad = [r for r in rows if r[1] != "killed"] + stale
    lines.append(f"== {len(rows) - len([r for r in rows if r[1] != 'killed'])}/{len(muts)} killed, "
                 f"{len([r for r in rows if r[1] == 'SURVIVED'])} survived, "
                 f"{len([r for r in rows if r[1] == 'BROKEN'])} broken, {len(stale)} stale; {total:.0f} s in all")
    report = "\n".join(lines)
    print()
    print(report)
    with open(os.path.join(WORK, "report.txt"), "w") as f:
        f.write(report + "\n")
    for m, result, detail, _ in rows:
        if result != "killed":
            print(f"!! {m['name']}: {result}: {detail}\n   why it matters: {m.get('why', '-')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
