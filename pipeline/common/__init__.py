"""What every stage shares: validated params, the one error type, atomic writes, the CLI wrapper."""
