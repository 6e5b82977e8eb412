"""The HTTP moderation API: OpenAI-compatible /v1/moderations and the native /v1/judge.

FastAPI on uvicorn, one guardian loaded per process, concurrent requests batched into
shared model calls (api.batcher). Reaches the model only through model.backends.
"""
