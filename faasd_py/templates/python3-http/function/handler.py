def handle(event, context):
    """event has body (bytes), headers, method, query (dict) and path; return a dict with
    statusCode, body and headers, or just a string for a 200."""
    return {
        "statusCode": 200,
        "body": "Hello from faasd-py!",
        "headers": {"Content-Type": "text/plain"},
    }
