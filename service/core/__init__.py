"""The logic the routes (and the CLI) call, one module per resource: routes parse and shape, these decide."""
