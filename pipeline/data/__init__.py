"""Image files -> manifest, original-picture groups and cross-split leaks (stages prepare, audit)."""
