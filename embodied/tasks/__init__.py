"""Task families: one module each, configured by one file in configs/task/."""
