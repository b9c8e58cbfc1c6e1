"""What the SQL backends share: argument checks, row-to-record builders, the SQL text written
once (with ``?`` placeholders a backend converts), and the TokenStore methods whose only
backend-specific part is how one statement runs.

The real differences stay in each backend: connections and threads, transactions, row locks,
triggers, LISTEN/NOTIFY and the DDL's types.
"""
