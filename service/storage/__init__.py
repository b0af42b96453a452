"""Storage: the ORM and sessions (`db/`), the data-access functions (`store`), API tokens (`tokens`) and
content-addressed files (`blobs`). The only package in service/ that builds a query."""
