"""One module per pipeline step, each with ``run(...)``; glue between core and io."""
