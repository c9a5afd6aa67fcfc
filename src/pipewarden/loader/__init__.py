"""loader: what the user asked for -> bytes and digests. Decides nothing about trust; executes nothing.

Decides: only *how* to get the bytes: which kind a spec is (``spec``: the one parse of
``custom_pipeline`` and the weights location into ``PipelineSpec`` / ``WeightsSpec``), which one
commit a hub revision resolves to, which files are fetched (``hub``, ``_hf``: safetensors and
JSON only, each checked against the size and digest the hub publishes) or read (``local``), and
how components are built from verified bytes (``components``: reviewed diffusers classes,
safetensors only, every file hashed while it is read, ``_safetensors``; verified-digest records
in ``records``). Produces ``CodeSource`` and ``Snapshot`` records (``code``, ``snapshot``).

Trusts: nothing it reads. Whether code may run, and which digests weights must match, is the
registry's admission (``pipewarden.registry.admission``); the loader only compares against the
digests it is given and refuses any mismatch.
"""
