"""The authentication core: pure decisions over certificates, accounts and secrets.

Nothing here imports the web stack or reads globals; time, state and
configuration come in as arguments so every rule is a fast unit test.
"""
