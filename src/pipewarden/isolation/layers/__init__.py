"""isolation/layers."""
