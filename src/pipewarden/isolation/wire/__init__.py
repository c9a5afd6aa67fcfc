"""isolation/wire."""
