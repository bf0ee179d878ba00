"""`spectrum serve`: every merge of the pair behind one OpenAI-compatible HTTP endpoint.

``names`` turns a request's model name (and ``lam`` / ``reasoning_effort``) into a
``MergeSpec``; ``reasoning`` splits thinking from answer as vLLM's qwen3 parser does;
``engine`` decodes requests together, joining a running batch at step boundaries;
``service`` is the request logic on top of the dashboard's ``Dashboard`` (the loaded pair,
limits, merge checks); ``api`` is the HTTP layer (FastAPI) and nothing else.
"""
