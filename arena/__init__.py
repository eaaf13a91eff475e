"""The Arena's record: votes, the Bradley-Terry leaderboard and preference-pair exports.

(`arena.py` at the top level is the launcher script; this package is what the Arena learns from users.)
"""
