"""HTTP routes, one module per resource; each route reads `AppState` and holds no SQL."""
