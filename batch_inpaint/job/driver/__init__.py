"""The driver's bookkeeping."""
