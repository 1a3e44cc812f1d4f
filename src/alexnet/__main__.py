"""`python -m alexnet ...`, which is also what `torchrun -m alexnet ...` runs."""

from alexnet.cli import main

raise SystemExit(main())
