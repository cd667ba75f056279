"""`python -m suite` is the same as `commsgd-run`."""

from suite.cli import main

if __name__ == "__main__":
    main()
