"""Built-in model builders and data sources that a spec can name."""
