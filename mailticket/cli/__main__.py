"""`python -m mailticket.cli`: as the `mailticket` console script (the tests start the daemon so)."""

from . import main

main()
