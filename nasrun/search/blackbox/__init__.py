"""Black-box search strategies: one file per strategy, each speaking ask/tell over a space's decisions."""
