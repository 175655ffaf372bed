"""Analytics: closed sessions archived into DuckDB, pseudonymised, and the reports made from them."""
