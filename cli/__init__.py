"""The `m2s` command line (typer). Thin: parse, call the library, render with rich."""
