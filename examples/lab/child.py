"""Run one function of an example in a process of its own (see lab/process.py).

    python -m lab.child EXAMPLE_FILE FUNCTION_NAME JSON_ARGS
"""

from __future__ import annotations

import importlib.util
import json
import sys


def main() -> None:
    source, name, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    spec = importlib.util.spec_from_file_location("lab_child_program", source)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = module
    for part in name.split("."):
        fn = getattr(fn, part)
    fn(*args)


if __name__ == "__main__":
    main()
