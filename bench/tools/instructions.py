#!/usr/bin/env python3
"""Instructions per event from a `BENCH_CALLGRIND=DIR` run. Usage:
    bench/tools/instructions.py DIR/*.cg [--top N]
For each file (one process: `bridge.<pid>.cg`, `reference-slack-journal.<pid>.cg`, ...):
the events it handled (calls of its once-per-event function), and its instructions per
event, with and without SHA-256. Valgrind runs the CPU without its SHA extensions, so
the signature check costs about 20 times its native share there: the figure without
it is the one that compares with CPU time. Counts were zeroed when the process became
ready, so start-up is left out. `--top N` adds the N functions with the most
instructions of their own, per event.

The counts are those of one process's user space: the kernel's work (sockets, file
writes) is not in them, so they complement the CPU figures rather than replace them."""
import re
import subprocess
import sys

# The function each kind of process runs once per event.
PER_EVENT = {
    'bridge': 'agent_bridge::slack::events::verified_body',
    'reference-slack-store': 'bench::slackev::accept',
    'reference-slack-journal': 'bench::slackev::accept',
    'reference-slack': 'bench::slackev::accept',
    'floor-slack': 'bench::slackev::accept',
}
SHA = 'sha2::sha256::compress256'


def calls_of(path, func):
    """Sum of the `calls=` lines under every `cfn=` naming `func`."""
    names, current, n = {}, None, 0
    with open(path, errors='replace') as f:
        for line in f:
            m = re.match(r'^(c?fn)=\((\d+)\)(?: (.*))?', line)
            if m:
                if m.group(3):
                    names[m.group(2)] = m.group(3)
                current = names.get(m.group(2), '') if m.group(1) == 'cfn' else None
                continue
            if line.startswith('calls=') and current is not None:
                if func in current:
                    n += int(line.split('=')[1].split()[0])
                current = None
    return n


def self_costs(path):
    """(total, [(self instructions, function)]) from callgrind_annotate."""
    out = subprocess.run(['callgrind_annotate', '--threshold=100', path],
                         capture_output=True, text=True, check=True).stdout
    total, rows = 0, []
    for line in out.split('\n'):
        m = re.match(r'^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$', line)
        if not m:
            continue
        value = int(m.group(1).replace(',', ''))
        if 'PROGRAM TOTALS' in m.group(2):
            total = value
        else:
            rows.append((value, m.group(2)))
    return total, rows


def main():
    args = sys.argv[1:]
    top = 0
    if '--top' in args:
        i = args.index('--top')
        top = int(args[i + 1])
        del args[i:i + 2]
    for path in args:
        what = path.rsplit('/', 1)[-1].split('.')[0]
        func = PER_EVENT.get(what)
        if func is None:
            print(f'{path}: unknown process kind {what!r}')
            continue
        events = calls_of(path, func)
        total, rows = self_costs(path)
        sha = sum(v for v, f in rows if SHA in f)
        if events == 0:
            print(f'{path}: no events')
            continue
        print(f'{path}: {events} events, {total / events:,.0f} instructions per event, '
              f'{(total - sha) / events:,.0f} without SHA-256')
        for value, f in sorted(rows, reverse=True)[:top]:
            name = re.sub(r'^\S*:', '', f.split(' [')[0])
            print(f'    {value / events:10,.0f}  {name[:110]}')


if __name__ == '__main__':
    main()
