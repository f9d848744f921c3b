"""``python -m vcorr ...`` and ``torchrun ... -m vcorr ...``: the ``vcorr`` command."""
from vcorr.cli.main import main

if __name__ == "__main__":
    main()
