"""Streaming moderation: the Faust app, message schemas, cache, flagged-table sink, services.

Nothing in here is needed to judge a query (that is model/); this package moves queries
from Kafka to the guardian and verdicts back, at least once, without ever dropping input.
"""
