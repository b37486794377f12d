"""HTTP: routes, SSE responses, input parsing, the admin check."""
