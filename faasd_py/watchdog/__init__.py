"""The function-side watchdog: the OpenFaaS watchdog contract in the Python stdlib.

It is copied into every function image next to a bare Python interpreter, so it must import
nothing outside the standard library (and nothing from the rest of faasd_py). Start-up cost is
part of every cold start, so the modules avoid heavy stdlib imports (http.server, asyncio,
dataclasses, email) and speak HTTP/1.1 themselves.
"""
