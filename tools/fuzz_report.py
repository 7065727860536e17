"""Run the fuzz corpus of tests/fuzz_corpus.py and print its outcomes by family and class.

    python tools/fuzz_report.py [--seed 0] [--only FAMILY_PREFIX] [--alarm 20] [--all] [--json out.json]

Unlike the test, each case runs under a per-case alarm (SIGALRM, ``--alarm`` seconds): a case that
does not answer is counted as a hang and the run goes on. ``--isolate`` runs every case in a forked
child so that a segfault is counted as a crash instead of ending the run (slow).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's reflrp, not an installed one
os.environ.setdefault("OMP_NUM_THREADS", "1")

import fuzz_corpus as fc  # noqa: E402


class Hang(BaseException):
    """Raised by the alarm; a BaseException so reflrp's `except Exception` cannot swallow it."""


def _on_alarm(signum, frame):
    raise Hang()


def run_guarded(case, ws, alarm: int) -> tuple[str, str]:
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(alarm)
    try:
        return fc.run_case(case, ws)
    except Hang:
        return "hang", f"no answer within {alarm} s"
    except Exception as exc:  # the corpus's own build or oracle failed
        return "corpus_error", f"{type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)


def run_isolated(case, ws, alarm: int) -> tuple[str, str]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        outcome = run_guarded(case, ws, alarm)
        os.write(w, json.dumps(outcome).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not data:
        return "crash", f"child died with status {status}"
    return tuple(json.loads(data))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help="run only families starting with this")
    p.add_argument("--alarm", type=int, default=20, help="seconds per case before it counts as a hang")
    p.add_argument("--isolate", action="store_true", help="fork per case (counts segfaults as crashes)")
    p.add_argument("--all", action="store_true", help="list every non-ok case, not 3 per class")
    p.add_argument("--json", help="write every outcome here")
    p.add_argument("--trace", help="append each case id to this file before running it (finds a crash)")
    args = p.parse_args(argv)
    fc.OUTCOMES = fc.OUTCOMES + ("corpus_error",)
    fc.MEANING["corpus_error"] = "the corpus itself failed to build the case (a bug here, not in reflrp)"
    cases = [c for c in fc.build_corpus(args.seed) if c.family.startswith(args.only) or c.id.startswith(args.only)]
    start = time.perf_counter()
    results, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        ws = fc.Workspace(Path(tmp))
        runner = run_isolated if args.isolate else run_guarded
        trace = open(args.trace, "a", buffering=1) if args.trace else None
        for i, case in enumerate(cases):
            if trace:
                trace.write(case.id + "\n")
            t0 = time.perf_counter()
            outcome, detail = runner(case, ws, args.alarm)
            seconds[case.family] = seconds.get(case.family, 0.0) + time.perf_counter() - t0
            results.append((case, outcome, detail))
            if (i + 1) % 250 == 0:
                print(f"  {i + 1}/{len(cases)} cases, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(fc.summary(results, examples=10**9 if args.all else 2))
    print(f"\n{len(cases)} cases in {time.perf_counter() - start:.1f} s; seconds by family: " +
          ", ".join(f"{f} {t:.1f}" for f, t in sorted(seconds.items(), key=lambda kv: -kv[1])))
    if args.json:
        Path(args.json).write_text(json.dumps([{"id": c.id, "family": c.family, "outcome": o, "detail": d, "why": c.why}
                                               for c, o, d in results], indent=1))
    return 0 if all(o == "ok" for _, o, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
