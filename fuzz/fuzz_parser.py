"""Coverage-guided fuzzing of the request parser with atheris (libFuzzer).

    make fuzz                                        # a minute
    .venv/bin/python -m fuzz.fuzz_parser -max_total_time=600 [CORPUS_DIR]
                                                     # (from the repository's root)

The invariant is the hypothesis tests' (tests/unit/test_protocol_fuzz.py), with coverage
feedback instead of random draws: any bytes either parse into requests or raise
`HttpError`, never anything else, and splitting them anywhere changes nothing. A
failure stops the run and leaves the input in a `crash-*` file to replay:
`.venv/bin/python -m fuzz.fuzz_parser crash-...`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from seckill.http import protocol  # noqa: F401  (instrumented: the parser is what we fuzz)

from tests.support.parser_cases import SEEDS, chop, parse  # noqa: E402

MAX_CUTS = 4


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = [fdp.ConsumeIntInRange(0, 1 << 16) for _ in range(fdp.ConsumeIntInRange(0, MAX_CUTS))]
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    whole = parse([raw])
    assert parse(chop(raw, [c % (len(raw) + 1) for c in cuts])) == whole, raw
    assert parse([raw[i : i + 1] for i in range(len(raw))]) == whole, raw


def main() -> None:
    args = sys.argv
    if not any(not a.startswith("-") for a in args[1:]):
        # No corpus given: start from the seed requests (a 0 byte first: no cuts).
        seeds = Path(tempfile.mkdtemp(prefix="seckill-fuzz-"))
        for i, seed in enumerate(SEEDS):
            (seeds / f"seed-{i}").write_bytes(b"\x00" + seed)
        args = [*args, str(seeds)]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
