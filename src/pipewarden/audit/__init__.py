"""audit: the static CI audit (``pipewarden audit``). Reads pipeline files; never runs them.

Decides: what to report about a file and how loudly (``rules``: the ``PW0xx`` table; ``checks``:
call/attribute patterns; ``static``: one parse per file, then the sandbox's own scan, policy and
restricted-compile checks, so the static and runtime views cannot drift; ``format``: text, JSON
and SARIF 2.1.0). ``audit --run`` (``dynamic``) runs each file in a locked-down worker with tiny
components from ``synth`` (the plan: which recipe per ``__init__`` parameter, a minimal call) and
``recipes`` (the tiny, deterministic components themselves). Decides nothing about what may run:
that is the registry (trust) and the sandbox (policy).

Trusts: the sandbox policy data (``sandbox/policy``) and the organisation allowlist's policy
extras it is given; nothing in the audited files.
"""
