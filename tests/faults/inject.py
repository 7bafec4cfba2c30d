"""``python -m tests.faults.inject WHERE -- ARGS``: distkg ARGS in this process, killed by SIGKILL at a
chosen write. WHERE is ``PATTERN:N`` (the N-th os.replace, 1-based, whose target's name matches the
glob PATTERN: the moment a whole temporary file is about to become e.g. a checkpoint or metrics.json)
or ``PATTERN:N:torn`` (the temporary file cut to half its size first: the process died while
writing it). The kill is real; only where it lands is chosen here, which a test cannot do from
outside with a timer."""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
from pathlib import Path


def arm(where: str) -> None:
    pattern, nth, *torn = where.split(":")
    seen = [0]
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if fnmatch.fnmatchcase(Path(dst).name, pattern):
            seen[0] += 1
            if seen[0] == int(nth):
                if torn:
                    size = Path(src).stat().st_size
                    os.truncate(src, size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


if __name__ == "__main__":
    split = sys.argv.index("--")
    arm(sys.argv[1])
    from distkg.cli.main import main

    sys.exit(main(sys.argv[split + 1:]))
