"""The test project's only application: a tiny catalog of items."""
