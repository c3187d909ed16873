"""Child processes of a conformance run import the implementation under test.

The conformance plugin (spec_tests/conftest.py) puts this directory first on
PYTHONPATH when the package under test is not this project's ``evio``. Python
imports ``sitecustomize`` at start-up, so before an example or a test's child
script runs, ``import evio`` is made to give the package named by EVIO_IMPL.
"""

import importlib
import os
import sys

_name = os.environ.get("EVIO_IMPL") or "evio"
if _name != "evio":
    sys.modules["evio"] = importlib.import_module(_name)
