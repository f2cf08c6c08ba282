"""Thin shim so `python cli.py ...` works from a checkout without installing."""
from text2sql.cli import main

if __name__ == "__main__":
    main()
