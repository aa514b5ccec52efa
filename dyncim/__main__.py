import sys

from .warm import delegate

# A local pipeline run's warm worker runs the step in a forked child where it can (dyncim.warm);
# otherwise, or by hand, the step runs here.
code = delegate(sys.argv[1:])
if code is None:
    from .cli import main
    code = main()
raise SystemExit(code)
