"""``python3 -m faasd_py.watchdog``: the container entry point."""

from .server import main

if __name__ == "__main__":
    main()
