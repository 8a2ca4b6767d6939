"""A ``start_runtime(wrapper=...)`` wrapper: ``python module_dump.py OUT PYTHON -m MODULE ARGS...`` runs
``MODULE`` as ``__main__`` in this very process and, when it exits, writes the name of every module
the process imported to ``OUT`` (one per line): what the runtime's server process imported."""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    out = Path(sys.argv[1])
    command = sys.argv[2:]
    module = command[command.index("-m") + 1]
    atexit.register(lambda: out.write_text("\n".join(sorted(sys.modules))))
    sys.argv = [module, *command[command.index("-m") + 2 :]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
