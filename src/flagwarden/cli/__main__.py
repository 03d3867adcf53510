"""``python -m flagwarden.cli``."""

from flagwarden.cli import main

main()
