"""faasd-py python3 template: one process per request (classic watchdog).

The request body arrives on stdin; ``function.handler.handle(req)`` gets it as text and whatever
it returns is printed to stdout, which the watchdog sends back as the response body.
"""

import os
import site
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = os.path.join(HERE, "python")


def main() -> None:
    if os.path.isdir(PACKAGES):
        site.addsitedir(PACKAGES)  # requirements.txt, installed at build time (.pth files honoured)
    from function import handler

    req = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    ret = handler.handle(req)
    if ret is None:
        return
    if isinstance(ret, bytes | bytearray):
        sys.stdout.buffer.write(ret)
    else:
        print(ret)


if __name__ == "__main__":
    main()
