"""Tables and figures: pandas for numbers, matplotlib (Agg) for pictures, rich for terminals."""
