"""Allows ``python -m vcorr_cli`` (and ``torchrun -m vcorr_cli``)."""
from vcorr_cli.main import main

if __name__ == "__main__":
    main()
