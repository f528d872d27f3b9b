"""One module a scenario, each with `async def run(size: str) -> dict` (see bench/common.py)."""
