"""The gateway's benchmark: ``python -m bench`` (see README.md, "Benchmark").

Everything runs on loopback: a fast Hub88-shaped wallet stub, the gateway in front of
it (SQLite and Redis stores), a hand-written minimal translator as the reference peer,
and the stub reached directly. Results go to a table and ``bench/results/*.json``.

``bench/soak.py`` (run as a script) is the separate long correctness soak: mixed load
through two gateways, then a reconciliation against the wallet's own ledger.
"""
