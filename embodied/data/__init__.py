"""Data written and read by runs: transition replay (replay.py)."""
