#!/usr/bin/env python3
"""Inclusive cost of FUNC split by what it calls. Usage:
    perf script -i FILE --no-inline | bench/tools/callees.py 'agent_bridge::slack::events::handle' [depth]
For every sample whose stack contains FUNC, names the first `depth` (default 1)
non-plumbing frames called from FUNC's outermost occurrence; shares are of all samples."""
import sys, re, collections

SKIP = ('core::', '<core::', 'std::', '<std::', 'tokio::', '<tokio::', 'futures_util::',
        '<futures_util::', '<tracing::instrument', 'tracing::', '<alloc::boxed', 'alloc::boxed',
        '<F as ', '<axum::', 'axum::', '<tower', 'tower', '<hyper_util::service', '<async_trait',
        '<&mut ', '<&')

def name(line):
    parts = line.strip().split(None, 1)
    if len(parts) < 2:
        return ''
    f = re.sub(r'\+0x[0-9a-f]+', '', parts[1])
    return f.split(' (')[0]

def main():
    func = sys.argv[1]
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    total, hits = 0, 0
    c = collections.Counter()
    for block in sys.stdin.read().split('\n\n'):
        lines = block.strip().split('\n')
        if len(lines) < 2:
            continue
        total += 1
        frames = [name(l) for l in lines[1:]]  # innermost first
        idx = [i for i, f in enumerate(frames) if func in f]
        if not idx:
            continue
        hits += 1
        i = idx[-1]  # outermost occurrence
        inner = [f for f in reversed(frames[:i]) if f and not f.startswith(SKIP) and func not in f]
        key = ' > '.join(x[:90] for x in inner[:depth]) or '(self)'
        c[key] += 1
    print(f'{func}: {100*hits/max(total,1):.1f}% of {total} samples')
    for k, v in c.most_common(25):
        print(f'  {100*v/max(total,1):5.1f}%  {k}')

main()
