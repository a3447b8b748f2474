"""Put on PYTHONPATH by hpcft for the ranks of a user's own command (``launch.hf_integration``).

Python imports ``sitecustomize`` at start-up; this one installs hpcft's Trainer integration
(``hpcft.train.hf_integration``) and then runs the environment's own sitecustomize, if any, which
this file would otherwise hide. It never stops a process from starting.
"""

import importlib.machinery
import importlib.util
import os
import sys

try:
    from hpcft.train import hf_integration

    hf_integration.install()
except ImportError as e:  # the job's python has no hpcft: the command runs, without the integration
    print(f"hpcft: no Trainer integration in this environment ({e}); install hpcft here to get it", file=sys.stderr)

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here]
)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
