"""isolation: run the vetted pipeline in a locked-down worker process."""
