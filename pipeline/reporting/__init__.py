"""Results -> one self-contained HTML page (stage report)."""
