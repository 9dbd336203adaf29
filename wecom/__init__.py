"""WeCom (企业微信) protocol: crypto, callback parsing, replies, outbound calls, the contact
API client, the session-archive SDK binding and the simulator.

Plain Python with no Django imports and nothing from `apps/` or `wecom_ai/`, so the
protocol can be tested and reused on its own; tests/test_layers.py keeps it that way.
Values that come from settings are passed in by the Django side.
"""
