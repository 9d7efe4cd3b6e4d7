"""The one entrypoint in a checkout: `python train.py [overrides]` or `python train.py -m [sweep overrides]`
(installed: the `expkit` command, the same thing)."""
from expkit.__main__ import main

if __name__ == "__main__":
    main()
