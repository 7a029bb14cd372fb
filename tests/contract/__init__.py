"""The OpenAPI contract of the gateway: the spec (data) and the differences from it we keep on purpose."""
