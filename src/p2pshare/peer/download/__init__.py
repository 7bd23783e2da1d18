"""
Downloading one file from its holders, verified piece by piece, kept only
when whole.
"""
