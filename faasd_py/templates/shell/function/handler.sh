#!/bin/sh
# The request body arrives on stdin; whatever this prints is the response body.
# The query string is in $Http_Query, the method in $Http_Method, headers in $Http_<Name>.
cat
