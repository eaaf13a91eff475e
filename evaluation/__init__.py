"""Votes, leaderboards and preference-pair exports: what the arena learns from its users."""
