def handle(req: str) -> str:
    """Called once per request with the request body; the return value is the response body."""
    return req
