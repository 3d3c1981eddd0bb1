"""HTTP layer: dependencies, routes, metrics."""
