"""Every call the gateway makes: legacy APIs (legacy.py) and signed iGSP hooks (hooks.py), over one aiohttp client module (http.py)."""
