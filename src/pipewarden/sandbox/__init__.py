"""sandbox: verified source -> vetted class (scan, restricted compile, restricted exec, guarded run)."""
