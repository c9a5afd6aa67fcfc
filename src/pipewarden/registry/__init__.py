"""registry: decides what is trusted (allowlists, signers, lock files). No I/O-free code here executes anything."""
