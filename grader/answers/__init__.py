"""The answer key: reference implementations of every task, one module per lab."""
