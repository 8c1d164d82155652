"""Coverage-guided fuzz targets for the tls13 engine (see docs/fuzzing.md)."""
