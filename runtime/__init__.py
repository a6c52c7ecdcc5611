"""Site coordination runtime: public API (filled in as modules land)."""
