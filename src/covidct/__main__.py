"""`python -m covidct` is the same as the `covidct` command."""

from covidct.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
