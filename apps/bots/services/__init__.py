"""Domain actions of the bot, one module per stage of a turn.

`receive` (callback, admission, the turn row), `stream` (refreshes), `generate` (the
worker's retrieval and model run), `deliver` (the turn's one end: stream, response_url,
ledger). Views and tasks import the stage they call.
"""
