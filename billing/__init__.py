"""Money: the ledger, prices, purchases and (later) the visit meter. Imports nothing of the web."""
