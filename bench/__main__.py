"""`python -m bench`: the dispatch to a profile's module lives here, above them all, so that
`run`, `production` and `scale_out` import each other one way only (run at the bottom)."""

import asyncio
import contextlib
import os
import signal
import sys

from bench import production, scale_out
from bench.run import _cpu_model, main_async, parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain SIGTERM would skip the `finally` that stops the servers this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    features = f"profile {args.profile}" if args.profile else f"auth {'on' if args.auth else 'off'}"
    print(
        f"bench: levels {args.levels}, {args.tokens} tokens {1000 * args.delay:.0f} ms apart, "
        f"{args.rounds} x {args.duration:.0f} s per measurement, "
        f"{features}; machine: {os.cpu_count()} cores, "
        f"{_cpu_model()}, Python {sys.version.split()[0]}",
        flush=True,
    )
    if args.profile == "production":
        verdicts = asyncio.run(production.main_async(args))
    elif args.processes == 2:
        print("\n".join(asyncio.run(scale_out.main_async(args))))
        return 0
    else:
        verdicts = asyncio.run(main_async(args))
    print("\nbudget:")
    for line in verdicts:
        print(line)
    failed = any(line.startswith("FAIL") for line in verdicts)
    return 1 if failed and args.strict else 0


sys.exit(main())
