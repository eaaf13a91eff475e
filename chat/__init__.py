"""Chat turns answered by several columns at once (Compare, Arena) and the optional web search."""
