"""Compile the search AST (search.query) to PostgreSQL over the typed index tables."""
