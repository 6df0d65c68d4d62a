"""The two faces: platform (iGSP wallet hooks in, a legacy wallet out) and provider (iGSP catalogue and launch in, a legacy provider out), plugged into the app the same way (base.py)."""
