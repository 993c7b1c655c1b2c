"""Task adapters: each knows one job of a model family (how inputs are encoded, which inputs carry
relevance, how the model runs, how targets are read) and hands the methods a ``Batch``.

A new job is one adapter: subclass ``base.Task``, and its ``Batch`` (``attnlrp.methods.batch``).
"""
