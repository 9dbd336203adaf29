"""WeCom (企业微信) AI-bot protocol: crypto, callback parsing, replies, outbound calls, simulator.

Plain Python with no Django imports, so the protocol can be tested and reused on its own.
"""
