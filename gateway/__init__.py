"""iGSP Gateway: speak iGSP on one side, a legacy iGaming API on the other."""

__version__ = "0.1.0"
