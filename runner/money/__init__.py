"""Money: the spend ledger (SQLite + each run's journal), the budget guard's pure decisions, pools and
their caps, recovery of a lost ledger, and the reports read from it. Amounts are Decimal throughout."""
