"""`python -m macasr` and `torchrun -m macasr` enter the CLI here."""

from macasr.cli import main

if __name__ == "__main__":
    main()
