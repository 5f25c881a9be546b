"""`keepword backtest`: replay a mailbox's history through the production predictor."""
