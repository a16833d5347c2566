"""`python -m xmtc_cli` runs the `xmtc` command."""

from xmtc_cli.cli import main

main()
