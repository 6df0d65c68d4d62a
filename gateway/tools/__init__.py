"""Tools beside the server: the demo, the conformance kit, the legacy API simulators and ``try``."""
