"""The HTTP API: OpenAI's Files and Batches endpoints, single jobs, and API keys per owner.

Build it with `jobs.api.app.create_app()`; `promptq api` serves it with uvicorn.
"""
