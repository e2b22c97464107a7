#!/usr/bin/env python3
"""Attribute perf samples (perf script output with call graphs) to the innermost frame
that matches one of the buckets below, per thread kind. Usage:
    perf script -i FILE.perf.data --no-inline | bench/tools/attribute.py [--depth]
Prints inclusive shares: for every sample, the innermost agent_bridge:: frame (or, on
threads without one, the innermost interesting library frame)."""
import sys, re, collections

def bucket(frames, comm):
    # frames: innermost first
    for f in frames:
        if 'agent_bridge::' in f:
            f = re.sub(r'<impl [^>]*>', 'impl', f)
            f = re.sub(r'\+0x[0-9a-f]+', '', f)
            return f.split(' (')[0][:150]
    for key in ('sqlite3WalCheckpoint', 'walCheckpoint'):
        for f in frames:
            if key in f:
                return 'sqlite: WAL checkpoint'
    for f in frames:
        if 'sqlite3_exec' in f:
            return 'sqlite: sqlite3_exec (BEGIN/COMMIT)'
        if 'sqlite3_step' in f:
            return 'sqlite: sqlite3_step (statements, autocommit)'
        if 'sqlite3_prepare' in f or 'sqlite3LockAndPrepare' in f:
            return 'sqlite: prepare'
    for f in frames:
        for key in ('hyper::server', 'axum::serve', 'hyper_util::server'):
            if key in f:
                return 'http server (axum/hyper, outside handlers)'
        if 'hyper_util::client' in f or 'hyper::client' in f:
            return 'http client (hyper) outside bridge frames'
        if 'reqwest' in f:
            return 'reqwest'
        if 'sqlx' in f:
            return 'sqlx (outside bridge frames)'
        if 'park' in f and 'tokio' in f:
            return 'tokio park/unpark'
    # Nothing recognised: name the outermost frame below the runtime's task poll.
    names = [re.sub(r'\+0x[0-9a-f]+', '', f).split(' (')[0] for f in frames]
    for i, f in enumerate(names):
        if 'tokio::runtime::task::raw::poll' in f or 'Harness' in f:
            inner = [n for n in names[:i] if not n.startswith(('tokio::', 'core::', '<core::', 'std::', '<tokio::'))]
            if inner:
                return 'other: ' + inner[-1][:120]
    leaf = names[0] if names else '?'
    return f'other ({comm}): leaf {leaf[:100]}'

def main():
    counts = collections.Counter()
    comms = collections.Counter()
    total = 0
    frames, comm = [], None
    for line in sys.stdin:
        line = line.rstrip('\n')
        if not line.strip():
            if comm is not None:
                counts[(comm, bucket(frames, comm))] += 1
                comms[comm] += 1
                total += 1
            frames, comm = [], None
            continue
        if not line.startswith((' ', '\t')):
            comm = line.split()[0][:15]
            if comm.startswith('sqlx-sqlite'):
                comm = 'sqlx-sqlite'
            elif comm.startswith('tokio'):
                comm = 'tokio-worker'
            continue
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            frames.append(parts[1])
    if comm is not None:
        counts[(comm, bucket(frames, comm))] += 1
        comms[comm] += 1
        total += 1
    print(f'{total} samples')
    for c, n in comms.most_common():
        print(f'  thread {c:<16} {100*n/total:5.1f}%')
    print()
    for (c, b), n in counts.most_common(45):
        print(f'{100*n/total:5.1f}%  {c:<14} {b}')

main()
