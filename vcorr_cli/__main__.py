"""Allows ``python -m vcorr.cli``; ``python -m vcorr`` (the root __main__.py) is the same."""
from vcorr.cli.main import main

if __name__ == "__main__":
    main()
